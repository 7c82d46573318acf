-- The TLS-inspecting port's certificate authorities: one per account, made on first use (the API's
-- GET /v1/inspection/ca.pem or the first inspected tunnel) and shared by every inspecting node.
-- Read and written by gateway/inspect/ca.py only. key_pem is the CA's private key (PKCS#8 PEM):
-- whoever reads this table can mint certificates the account's clients trust.
CREATE TABLE inspection_cas (
    account_id  BIGINT PRIMARY KEY REFERENCES accounts (id),
    cert_pem    TEXT NOT NULL CHECK (cert_pem LIKE '-----BEGIN CERTIFICATE-----%'),
    key_pem     TEXT NOT NULL CHECK (key_pem LIKE '-----BEGIN PRIVATE KEY-----%'),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
