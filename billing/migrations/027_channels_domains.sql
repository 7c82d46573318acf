-- What the chain watcher last read of each PaymentChannels contract's EIP-712 domain: problem is
-- NULL when the contract takes the proofs and consents this IPSX signs, else why it refuses them
-- (another version). An API node has no connection to the chain: it reads this before it signs a
-- closing consent, which freezes the requester's channel and would do so for nothing if the
-- contract refused it (billing/chain.py).
CREATE TABLE channels_domains (
    address     TEXT PRIMARY KEY,
    problem     TEXT NULL,
    checked_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
