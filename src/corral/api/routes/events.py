"""``/events``: state changes as Server-Sent Events, one ``data: <json>`` frame each.

A comment frame goes out whenever nothing happened for ``sse_keepalive`` seconds, so
proxies keep the connection open and a client can tell a quiet server from a dead one. An
error raised while streaming (the headers are already sent) becomes one ``event: error``
frame carrying the usual error body, and the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from corral.api.errors import internal_error
from corral.api.responses import answers
from corral.api.routes import Service
from corral.errors import CorralError

router = APIRouter(tags=["events"])

KEEPALIVE_FRAME = b": keep-alive\n\n"
#: the first frame: the subscription exists, nothing after this point will be missed
SUBSCRIBED_FRAME = b": subscribed\n\n"


@router.get(
    "/events",
    summary="events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **answers(None, 404, 422)},
)
async def events(request: Request, service: Service, upid: str | None = None) -> StreamingResponse:
    # called here, not in the generator, so an error raised at once still gets its status
    source = service.events(upid)
    keepalive: float = request.app.state.sse_keepalive
    return StreamingResponse(
        frames(source, keepalive),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def data_frame(payload: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    # compact JSON never contains a newline, so one data line is the whole event
    body = json.dumps(payload, separators=(",", ":"), default=str)
    return f"{head}data: {body}\n\n".encode()


async def frames(source: AsyncIterator[dict[str, Any]], keepalive: float) -> AsyncIterator[bytes]:
    """Frame each event of ``source``, with a keep-alive comment after each quiet period."""
    pending: asyncio.Future[dict[str, Any]] | None = None
    try:
        yield SUBSCRIBED_FRAME
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            # wait() leaves the pending item running, so a keep-alive never loses an event
            done, _ = await asyncio.wait({pending}, timeout=keepalive)
            if not done:
                yield KEEPALIVE_FRAME
                continue
            finished, pending = pending, None
            try:
                event = finished.result()
            except StopAsyncIteration:
                return
            except CorralError as exc:
                yield data_frame({"error": exc.as_dict()}, event="error")
                return
            except Exception as exc:
                yield data_frame({"error": internal_error(exc, "GET /events").as_dict()}, "error")
                return
            yield data_frame(event)
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        closer = getattr(source, "aclose", None)
        if closer is not None:
            await closer()
