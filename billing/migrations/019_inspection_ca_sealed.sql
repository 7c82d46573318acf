-- An inspection CA's key may be stored sealed with IPSX_INSPECT_CA_SECRET: PKCS#8 PEM encrypted
-- with it (gateway/inspect/ca.py), so that reading this table alone no longer mints certificates.
ALTER TABLE inspection_cas DROP CONSTRAINT inspection_cas_key_pem_check;
ALTER TABLE inspection_cas ADD CONSTRAINT inspection_cas_key_pem_check CHECK (
    key_pem LIKE '-----BEGIN PRIVATE KEY-----%' OR key_pem LIKE '-----BEGIN ENCRYPTED PRIVATE KEY-----%'
);
