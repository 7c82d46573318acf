"""One certificate authority per account, the one its requester installs to let the port inspect TLS.

Made on first use (by the API's ``GET /v1/inspection/ca.pem`` or the first inspected tunnel) and
kept in PostgreSQL (table ``inspection_cas``, migration 014), so every inspecting node mints leaf
certificates with the same CA. Two nodes making one at once both insert ``ON CONFLICT DO NOTHING``
and both read back the row that won. The private key never leaves this module's callers' memory
but through that table: it is not in any repr, log line or error message.

With a secret (``IPSX_INSPECT_CA_SECRET``, given to the API and to every inspecting node) the key is
stored sealed: PKCS#8 encrypted with that secret, so a copy of the database alone cannot mint
certificates the account's clients trust. A key stored before the secret was set is sealed the
next time :func:`authority_for` reads it with one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from dataclasses import dataclass, field

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KEY_SIZE = 2048
_SEALED = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
VALIDITY = dt.timedelta(days=10 * 365)
BACKDATE = dt.timedelta(days=2)  # clients with a clock a little behind still accept it


class CaKeyLocked(Exception):
    """The CA's key is sealed and the secret to open it is missing or wrong."""


def _key_pem(key: rsa.RSAPrivateKey, secret: str | None) -> bytes:
    sealing: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if secret is None
        else serialization.BestAvailableEncryption(secret.encode("utf-8"))
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, sealing)


@dataclass(frozen=True, slots=True)
class Authority:
    """An account's CA: its certificate and private key, both PEM."""

    account_id: int
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    created_at: dt.datetime | None = None

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate (DER), lower-case hex: what a requester compares after install."""
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        return hashlib.sha256(der).hexdigest()

    @property
    def sealed(self) -> bool:
        """Whether the stored key is encrypted with the secret."""
        return self.key_pem.startswith(_SEALED)

    def private_key(self, secret: str | None = None) -> rsa.RSAPrivateKey:
        """The CA's key; ``secret`` opens a sealed one. Raises CaKeyLocked without the right one."""
        if self.sealed and secret is None:
            raise CaKeyLocked("the inspection CA's key is sealed: set IPSX_INSPECT_CA_SECRET")
        try:
            key = serialization.load_pem_private_key(
                self.key_pem, password=secret.encode("utf-8") if self.sealed and secret else None
            )
        except ValueError:
            raise CaKeyLocked("the inspection CA's key does not open with IPSX_INSPECT_CA_SECRET") from None
        if not isinstance(key, rsa.RSAPrivateKey):  # only this module writes the table
            raise TypeError("an inspection CA's key must be RSA")
        return key


def new_authority(
    account: str, *, key_size: int = KEY_SIZE, secret: str | None = None
) -> tuple[bytes, bytes]:
    """A fresh self-signed CA for ``account`` (its name): (certificate PEM, private key PEM, sealed
    with ``secret`` when given).

    CPU-bound (an RSA key generation): call it in a thread from async code.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"IPSX inspection CA for {account}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "IPSX"),
        ]
    )
    start = dt.datetime.now(dt.UTC) - BACKDATE
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + VALIDITY)
        # path length 0: it signs leaf certificates only, never another CA
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key, secret)


def _authority(row: asyncpg.Record) -> Authority:
    return Authority(
        account_id=int(row["account_id"]),
        cert_pem=str(row["cert_pem"]).encode("ascii"),
        key_pem=str(row["key_pem"]).encode("ascii"),
        created_at=row["created_at"],
    )


async def find_authority(pool: asyncpg.Pool, account_id: int) -> Authority | None:
    """The account's CA, or None when it has none yet."""
    row = await pool.fetchrow(
        "SELECT account_id, cert_pem, key_pem, created_at FROM inspection_cas WHERE account_id = $1",
        account_id,
    )
    return None if row is None else _authority(row)


async def authority_for(
    pool: asyncpg.Pool, account_id: int, account: str, *, secret: str | None = None
) -> Authority:
    """The account's CA, made now if it has none (the same one for every caller, whoever wins).

    With ``secret``, a new key is stored sealed and an unsealed one found is sealed in place (a
    sealed one is returned as it is: :meth:`Authority.private_key` opens it).
    """
    found = await find_authority(pool, account_id)
    if found is not None:
        if secret is not None and not found.sealed:
            found = await _seal(pool, found, secret)
        return found
    cert_pem, key_pem = await asyncio.to_thread(new_authority, account, secret=secret)
    await pool.execute(
        "INSERT INTO inspection_cas (account_id, cert_pem, key_pem) VALUES ($1, $2, $3)"
        " ON CONFLICT (account_id) DO NOTHING",
        account_id,
        cert_pem.decode("ascii"),
        key_pem.decode("ascii"),
    )
    made = await find_authority(pool, account_id)
    if made is None:  # the account was deleted meanwhile (the row references it)
        raise LookupError(f"no account with id {account_id}")
    return made


async def _seal(pool: asyncpg.Pool, authority: Authority, secret: str) -> Authority:
    """Store the CA's key sealed with ``secret`` (once: a node that sealed it first wins)."""
    sealed = _key_pem(authority.private_key(), secret).decode("ascii")
    await pool.execute(
        "UPDATE inspection_cas SET key_pem = $2 WHERE account_id = $1 AND key_pem = $3",
        authority.account_id,
        sealed,
        authority.key_pem.decode("ascii"),
    )
    found = await find_authority(pool, authority.account_id)
    if found is None:
        raise LookupError(f"no account with id {authority.account_id}")
    return found
