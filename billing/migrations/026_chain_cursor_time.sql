-- The timestamp of the block each chain watcher's cursor is at (unix seconds; NULL for a cursor
-- saved before this column). A closing consent stops freezing its channel only once the watcher
-- of the channel's contract has applied a block stamped after the consent's expiry: by then every
-- block that could take the consent is applied, so a close at the consented balance would be
-- known (billing/channels.py, FROZEN).
ALTER TABLE chain_cursors ADD COLUMN block_time BIGINT NULL CHECK (block_time >= 0);
