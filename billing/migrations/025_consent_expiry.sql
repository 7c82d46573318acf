-- The operator's closing consent expires (dashboard/routes_payments.py, billing/payments.py).
--
-- PaymentChannels.cooperativeClose now takes ClosingConsent(channel id, balance, expiresAt) and
-- refuses it in any block stamped after expiresAt. consent_expires_at records the expiresAt the
-- operator signed (unix seconds). The channel stays frozen at consented_balance only until the
-- chain is past it (billing/channels.py, FROZEN; migration 026); after that it is usable again, and the first proof above consented_balance clears both columns, so the check of
-- migration 023 (proof_balance <= consented_balance) keeps holding. NULL with a consented_balance:
-- a consent given before expiries existed, which its contract takes for good: frozen for good.
ALTER TABLE channels ADD COLUMN consent_expires_at BIGINT NULL CHECK (consent_expires_at >= 0);
ALTER TABLE channels ADD CHECK (consent_expires_at IS NULL OR consented_balance IS NOT NULL);
