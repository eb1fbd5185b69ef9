"""Server-sent events framing and client-disconnect handling.

Owns the wire form of OpenAI streams (`data: {json}\\n\\n`, ending with `data: [DONE]\\n\\n`),
the in-stream error event (`data: {"error": {...}}` then `[DONE]`), and the rule that a client
going away cancels the work in flight: `EventStreamResponse` watches for `http.disconnect`
while streaming and closes the body iterator (whose `finally` cancels the gRPC calls);
`cancel_on_disconnect` does the same for non-streaming requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from facade.errors import ApiError, internal_error

logger = logging.getLogger(__name__)

DONE_EVENT = b"data: [DONE]\n\n"
# Headers of every event stream: no caching, no proxy buffering.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

T = TypeVar("T")


def sse_event(payload: BaseModel | dict[str, Any], exclude: set[str] | None = None) -> bytes:
    """One `data:` event holding a JSON object."""
    if isinstance(payload, BaseModel):
        text = payload.model_dump_json(exclude=exclude)
    else:
        text = json.dumps(payload, separators=(",", ":"))
    return b"data: " + text.encode() + b"\n\n"


def sse_error(error: ApiError) -> bytes:
    """The event that reports an error after the stream started (followed by DONE_EVENT)."""
    return sse_event(error.body())


async def guarded_stream(
    events: AsyncIterator[bytes],
    on_close: Callable[[], None],
    label: str,
    *,
    error_event: Callable[[ApiError], bytes] = sse_error,
    last_event: bytes | None = DONE_EVENT,
) -> AsyncIterator[bytes]:
    """Relay `events`; an error after the first byte becomes `error_event(error)`; the stream
    always ends with `last_event` (`[DONE]`; None for the Responses API, which has none), and
    `on_close` (cancel the core calls) runs however it ends."""
    try:
        async with aclosing(events) as relayed:
            async for event in relayed:
                yield event
    except ApiError as error:
        yield error_event(error)
    except Exception:
        logger.exception("stream %s failed", label)
        yield error_event(internal_error())  # a facade bug: still an error event
    finally:
        on_close()
    if last_event is not None:
        yield last_event


class EventStreamResponse(StreamingResponse):
    """A `text/event-stream` response that stops its body iterator when the client leaves."""

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream_then_stop() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:  # the client went away while we were writing
                        logger.info("client disconnected during a stream")
                    group.cancel_scope.cancel()

                group.start_soon(stream_then_stop)
                await self.listen_for_disconnect(receive)
                logger.debug("client disconnected; cancelling the stream")
                group.cancel_scope.cancel()
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await close()


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and answering 499) if the client disconnects first."""
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(_wait_for_disconnect(request.receive))
    try:
        await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not work_task.done():
            work_task.cancel()
        watch_task.cancel()
    if work_task.cancelled() or not work_task.done():
        await asyncio.gather(work_task, return_exceptions=True)
        logger.info("client disconnected; request cancelled")
        raise ApiError(499, "The client closed the request.", type="cancelled")
    return work_task.result()
