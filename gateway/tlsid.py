"""The peering listener's TLS identity: a key pair and self-signed certificate in state_dir.

No CA is involved: a peer trusts this gateway's certificate because the token
it redeemed (or the authenticated peering channel, later) named the SHA-256 of
its public key (the *pin*, base64url of SHA-256 over the DER SubjectPublicKeyInfo).
The certificate's names and dates therefore carry no trust; it is valid for
100 years so that no expiry ever breaks a peering, and the pin, not the
certificate, is what rotation changes.

Files (0600, in the 0700 state dir): ``peering-tls.pem`` (key + certificate)
and, while a rotation is under way, ``peering-tls-next.pem``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CURRENT = "peering-tls.pem"
NEXT = "peering-tls-next.pem"
PIN_LEN = 43  # base64url of 32 bytes, unpadded


def pin_of_cert(der: bytes) -> str:
    """The pin of a DER certificate: base64url(SHA-256(SubjectPublicKeyInfo))."""
    spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(spki).digest()).rstrip(b"=").decode()


def is_pin(value: object) -> bool:
    if not isinstance(value, str) or len(value) != PIN_LEN:
        return False
    try:
        return len(base64.urlsafe_b64decode(value + "=")) == 32
    except ValueError:
        return False


def _generate(common_name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64] or "crosswire")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))  # clocks of peers may lag
            .not_valid_after(now + datetime.timedelta(days=36500))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _pin_of_pem(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem[pem.index(b"-----BEGIN CERTIFICATE-----"):])
    return pin_of_cert(cert.public_bytes(serialization.Encoding.DER))


@dataclass
class TlsIdentity:
    """The listener's certificate: loaded or made once, swapped in place on rotation."""

    state_dir: Path
    common_name: str
    _context: ssl.SSLContext | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.state_dir / CURRENT
        if not path.exists():
            _write_private(path, _generate(self.common_name))
        os.chmod(path, 0o600)
        self.pin = _pin_of_pem(path.read_bytes())
        nxt = self.state_dir / NEXT
        self.next_pin: str | None = _pin_of_pem(nxt.read_bytes()) if nxt.exists() else None

    def pins(self) -> tuple[str, ...]:
        """What peers must accept now: the current pin, and the next one during a rotation."""
        return (self.pin,) if self.next_pin is None else (self.pin, self.next_pin)

    def server_context(self) -> ssl.SSLContext:
        """The listener's context (one object: rotation reloads it, new handshakes see the new key)."""
        if self._context is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(self.state_dir / CURRENT)
            self._context = ctx
        return self._context

    # --- rotation: prepare (peers learn the next pin), commit (switch) or abandon -----------

    def prepare(self) -> str:
        path = self.state_dir / NEXT
        if not path.exists():
            _write_private(path, _generate(self.common_name))
        self.next_pin = _pin_of_pem(path.read_bytes())
        return self.next_pin

    def commit(self) -> str:
        nxt = self.state_dir / NEXT
        os.replace(nxt, self.state_dir / CURRENT)
        self.pin, self.next_pin = _pin_of_pem((self.state_dir / CURRENT).read_bytes()), None
        if self._context is not None:
            self._context.load_cert_chain(self.state_dir / CURRENT)
        return self.pin

    def abandon(self) -> None:
        (self.state_dir / NEXT).unlink(missing_ok=True)
        self.next_pin = None
