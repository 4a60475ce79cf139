"""TLS for corral's links: the context a server presents, and the contexts that trust it.

``corral serve --tls-cert FILE --tls-key FILE`` (or ``--tls``, which makes a self-signed
pair in the home directory, once, and again only when it does not name an address listened
on) puts the HTTP API, the agent port and the event queue behind TLS. The certificate is
public: the dispatcher copies it to ``HOME/tls_certificate.pem``, where the local CLI and
client find it, and hands it to the agents its drivers start, which trust exactly it.
Dispatchers sharing a store compare the tops of their chains (:func:`chain_top`).

Trusting a certificate here means taking it as an anchor even when it is not a CA's (a
pinned leaf), so a self-signed server certificate and a CA-issued one work alike.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import re
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from corral.errors import InvalidRequest
from corral.secretfile import replace_file

#: where ``corral serve`` leaves a copy of its certificate for the local CLI and client
CERTIFICATE_FILE = "tls_certificate.pem"
#: the key of the pair ``corral serve --tls`` makes (private to the dispatcher's user)
KEY_FILE = "tls_key.pem"

_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
_CERTIFICATE_BLOCK = re.compile(
    r"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.DOTALL
)


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """A server's certificate and key files, checked to load, and its certificates alone
    (public: what a client is given to trust)."""

    certfile: Path
    keyfile: Path | None
    certificate: str

    @classmethod
    def load(cls, certfile: Path, keyfile: Path | None) -> ServerTLS:
        server_context(certfile, keyfile)
        return cls(certfile, keyfile, read_certificates(certfile, "--tls-cert"))

    def context(self) -> ssl.SSLContext:
        return server_context(self.certfile, self.keyfile)


def server_context(certfile: Path, keyfile: Path | None) -> ssl.SSLContext:
    """The context a server presents ``certfile`` with (its key in ``keyfile``, or in
    ``certfile`` itself); an unreadable or mismatched pair is an :class:`InvalidRequest`
    naming the file."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        pair = certfile if keyfile is None else f"{certfile} and {keyfile}"
        raise InvalidRequest(
            f"cannot load the TLS certificate and key from {pair}: {exc.reason or exc}"
            " (expected PEM: the certificate chain, and its private key)",
            field="tls",
        ) from None
    except OSError as exc:  # after SSLError, which is one
        failed = exc.filename or (keyfile if keyfile is not None else certfile)
        reason = exc.strerror or str(exc)
        raise InvalidRequest(f"cannot load {failed}: {reason}", field="tls") from None
    return context


def read_certificates(path: Path, field: str) -> str:
    """The PEM certificates in ``path`` (only them: a private key beside them is left out),
    checked to be some; else an :class:`InvalidRequest` saying so, with ``field`` (the
    option that named the file)."""
    try:
        pem = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a PEM text file"
        raise InvalidRequest(f"{field} {path}: cannot read it: {reason}", field=field) from None
    blocks = _CERTIFICATE_BLOCK.findall(pem)
    if not blocks:
        raise InvalidRequest(
            f"{field} {path}: expected PEM certificates (-----BEGIN CERTIFICATE-----), found none",
            field=field,
        )
    pem = "\n".join(blocks) + "\n"
    try:
        trusting(pem)
    except ssl.SSLError as exc:
        raise InvalidRequest(
            f"{field} {path}: its certificates do not load ({exc.reason or exc})", field=field
        ) from None
    return pem


def chain_top(pem: str) -> str:
    """The SHA-256 of the last certificate in ``pem``, the top of the chain a server presents:
    a client given one server's chain also trusts another's when the two tops are the same
    (one self-signed certificate, or one issuing CA)."""
    blocks = _CERTIFICATE_BLOCK.findall(pem)
    return hashlib.sha256(blocks[-1].encode() if blocks else b"").hexdigest()


def trusting(pem: str, *, check_hostname: bool = True, system: bool = False) -> ssl.SSLContext:
    """A client context that trusts the certificates in ``pem`` (and, with ``system``, the
    system's CAs too). Without ``check_hostname`` the certificate is a pin: whatever
    address reached the server, only that certificate is accepted.

    Raises ``ssl.SSLError`` if ``pem`` holds no certificate."""
    if _PEM_CERTIFICATE not in pem:
        raise ssl.SSLError("no PEM certificate found")
    if system:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.load_verify_locations(cadata=pem)
    else:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=pem)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.check_hostname = check_hostname
    return context


def make_self_signed(certfile: Path, keyfile: Path, names: Iterable[str], days: int = 3650) -> None:
    """Write a new self-signed certificate for ``names`` (host names or IP addresses) and
    its key (mode 0600) to the two files; both are written whole or not at all."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    alternative: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            alternative.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternative.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corral dispatcher")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    replace_file(keyfile, key_pem, 0o600)
    replace_file(certfile, certificate.public_bytes(serialization.Encoding.PEM), 0o644)


def ensure_self_signed(certfile: Path, keyfile: Path, hosts: Iterable[str]) -> bool:
    """Make the self-signed pair if it is missing, or again if its certificate does not
    name every one of ``hosts`` (the addresses listened on); True if it was made."""
    wanted = [h for h in hosts if h not in _WILDCARDS]
    if keyfile.exists() and certfile.exists() and set(wanted) <= _names_of(certfile):
        return False
    make_self_signed(certfile, keyfile, default_names(wanted))
    return True


def default_names(hosts: Iterable[str]) -> list[str]:
    """What a self-signed dispatcher certificate names: the hosts it listens on, this
    machine (its name and the addresses the name resolves to), and loopback."""
    names = [h for h in hosts if h not in _WILDCARDS]
    machine = socket.gethostname()
    try:
        addresses = socket.gethostbyname_ex(machine)[2]
    except OSError:
        addresses = []
    return [*names, machine, *addresses, "localhost", "127.0.0.1", "::1"]


_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def _names_of(certfile: Path) -> set[str]:
    """The host names and addresses ``certfile``'s certificate names (none if unreadable)."""
    from cryptography import x509

    try:
        certificate = x509.load_pem_x509_certificate(certfile.read_bytes())
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (OSError, ValueError, x509.ExtensionNotFound):
        return set()
    found = set(names.value.get_values_for_type(x509.DNSName))
    found |= {str(a) for a in names.value.get_values_for_type(x509.IPAddress)}
    return found
