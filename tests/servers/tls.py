"""A throwaway self-signed certificate for the loopback HTTPS stand-ins.

azure-keyvault-secrets refuses plain http, so Key Vault has to be served over TLS, and
the client has to trust it through ``REQUESTS_CA_BUNDLE`` / ``SSL_CERT_FILE`` exactly as
it would trust a corporate CA. An EC key keeps generation around a millisecond, so a
fresh certificate per session costs nothing.
"""

from __future__ import annotations

import atexit
import datetime as dt
import ipaddress
import shutil
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TlsMaterial", "default_tls_material", "generate_tls_material"]


@dataclass(frozen=True)
class TlsMaterial:
    cert_file: Path
    """PEM certificate; also the CA bundle to trust (it is self-signed)."""
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def generate_tls_material(directory: Path) -> TlsMaterial:
    """Write a self-signed cert (SAN 127.0.0.1, ::1, localhost) and its key into ``directory``.

    The extensions are those a strict verifier (Python 3.13's VERIFY_X509_STRICT) wants
    from a trust anchor, so the same file keeps working on newer interpreters.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "amlrelay loopback test CA")])
    now = dt.datetime.now(dt.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ]),
            critical=False,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "loopback-cert.pem", directory / "loopback-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return TlsMaterial(cert_file, key_file)


_default: TlsMaterial | None = None
_default_lock = threading.Lock()


def default_tls_material() -> TlsMaterial:
    """One certificate per process, in a temp dir removed at exit (for use outside pytest)."""
    global _default
    with _default_lock:
        if _default is None:
            directory = Path(tempfile.mkdtemp(prefix="amlrelay-tls-"))
            atexit.register(shutil.rmtree, directory, True)
            _default = generate_tls_material(directory)
        return _default
