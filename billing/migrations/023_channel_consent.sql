-- The operator's closing consent freezes a requester channel (dashboard/routes_payments.py).
--
-- PaymentChannels.cooperativeClose takes the operator's ClosingConsent(channel id, balance) with
-- no expiry: once given for a balance B, the requester may close at B whenever it likes. So the
-- channel is frozen at B from the moment the consent is signed: consented_balance records B, no
-- invoice is made on the channel any more, no balance proof above B is accepted on it, and the
-- requester counts as having no usable channel for new traffic (billing/payments.py) until it
-- opens another. NULL: no consent was given. The chain state (the state column) is unchanged:
-- the channel stays 'open' on-chain until the requester closes it.
ALTER TABLE channels ADD COLUMN consented_balance NUMERIC(78, 0) NULL CHECK (consented_balance >= 0);
ALTER TABLE channels ADD CHECK (consented_balance IS NULL OR proof_balance <= consented_balance);
