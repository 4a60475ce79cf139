"""Distributed computations on corral's nodes: discoro's model on asyncio.

A ``Computation`` ships its components to worker processes that the dispatcher starts, then
runs remote tasks (coroutine functions or plain functions) on them and exchanges messages
with them, directly, over an authenticated connection::

    async def compute(n, client, task=None):
        await client.send(n * n)
        return await task.receive()

    async with Computation([compute]) as computation:
        await computation.schedule(workers=2)
        rtask = await computation.run(compute, 7, computation.mailbox)
        print(await computation.receive())   # 49
        await rtask.send("done")
        print(await rtask.result())          # "done"

Layers: ``messages`` (the protocol) and ``auth`` (proof of the secret) under ``worker`` (the
worker process) and ``computation`` (the client); ``placement`` is pure.
"""

from corral.compute.computation import Computation
from corral.compute.errors import (
    ComputationClosed,
    ComputeError,
    RemoteError,
    TaskAbandoned,
)
from corral.compute.handles import Location, MailboxHandle, TaskHandle
from corral.compute.status import Status, StatusMessage
from corral.compute.tasks import RemoteTask, TaskOptions, task
from corral.wire.handshake import AuthenticationFailed

__all__ = [
    "AuthenticationFailed",
    "Computation",
    "ComputationClosed",
    "ComputeError",
    "Location",
    "MailboxHandle",
    "RemoteError",
    "RemoteTask",
    "Status",
    "StatusMessage",
    "TaskAbandoned",
    "TaskHandle",
    "TaskOptions",
    "task",
]
