"""The connection type of a computation's links (the secret's proof is ``wire.handshake``;
their TLS contexts are ``corral.tls``'s)."""

from __future__ import annotations

from corral.compute.messages import ComputeMessage
from corral.wire.codec import FramedConnection

ComputeConnection = FramedConnection[ComputeMessage]
