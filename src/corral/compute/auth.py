"""TLS contexts for a computation's connections (the secret's proof is ``wire.handshake``)."""

from __future__ import annotations

import ssl

from corral.compute.messages import ComputeMessage
from corral.wire.codec import FramedConnection

ComputeConnection = FramedConnection[ComputeMessage]


def server_context(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    """The client's TLS context (it listens; workers dial it)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context


def pinned_context(certificate_pem: str) -> ssl.SSLContext:
    """The worker's TLS context: it trusts exactly the client's certificate.

    The certificate travels with the worker's configuration, so the pin replaces a host name
    check: a client may be reached by any address.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=certificate_pem)
    context.check_hostname = False
    return context
