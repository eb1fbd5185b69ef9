"""Running core calls for one HTTP request: `CallOptions` (metadata and deadline), `call_core`
for unary RPCs (Score, Embed, Tokenize, Detokenize, ListModels), and `Generation` for `Generate`.

`call_core` maps a failed call to the error table (facade/errors.py); a unary call that fails
UNAVAILABLE before the core answered is retried on another core by the channel's retry policy
(facade/app.py).

`Generation` owns the admission rule: every call's first response is awaited before the facade
answers, so that admission errors (unknown model, overload, bad parameter) become real HTTP
statuses and not errors inside a 200 stream. Also merges several calls (one per completions
prompt) into one stream of `(call_index, GenerateResponse)` in arrival order, and cancels every
call when the consumer stops early (client disconnect) so the core frees the request's pages.

Failover: a call that fails UNAVAILABLE before its first response (its core is draining, was
killed, or went away) is opened again, up to OPEN_ATTEMPTS times; with the channel's
round_robin the new call goes to another core. This happens only at admission, before the
facade has sent the client anything; a call cut after that ends the stream with an error event
(facade/sse.py), never with a silent truncation. (The channel's gRPC retry policy covers the
same case below this one; this layer also covers calls gRPC has already committed.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from facade.errors import api_error_from_grpc
from tandem.v1 import inference_pb2 as pb
from tandem.v1.inference_pb2_grpc import InferenceStub

logger = logging.getLogger(__name__)

Reply = TypeVar("Reply")

# Responses buffered per call between the gRPC reader and the HTTP writer.
QUEUE_SLOTS_PER_CALL = 8
# Times one call is opened before its UNAVAILABLE becomes a 503, and the pause between tries.
OPEN_ATTEMPTS = 3
OPEN_RETRY_BACKOFF_S = 0.05


@dataclass(frozen=True)
class CallOptions:
    """What every core call of one HTTP request carries."""

    request_id: str  # sent as `x-request-id` metadata
    timeout_s: float  # gRPC deadline of each call
    # W3C `traceparent` (+ `tracestate`) metadata of every call (facade/tracing.py); () if none
    trace: tuple[tuple[str, str], ...] = ()
    # The HTTP request's OpenTelemetry span when tracing is on (annotated with the model)
    span: Any = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-request-id", self.request_id), *self.trace)

    def call_metadata(self, call_index: int, num_calls: int) -> tuple[tuple[str, str], ...]:
        """Metadata of one of several concurrent calls: each gets its own id, `<id>-p<index>`,
        so that no two in-flight core requests share one (the core may key state by it)."""
        if num_calls == 1:
            return self.metadata
        return (("x-request-id", f"{self.request_id}-p{call_index}"), *self.trace)

    def note_model(self, requested: str, served: str = "") -> None:
        """Put the call's model on the request's span (tracing on only)."""
        if self.span is not None:
            if requested:
                self.span.set_attribute("gen_ai.request.model", requested)
            if served:
                self.span.set_attribute("gen_ai.response.model", served)


async def call_core(
    method: Callable[..., Awaitable[Reply]], request: Any, options: CallOptions
) -> Reply:
    """One unary core call (`stub.Score`, `stub.Embed`, ...) with the request's metadata and
    deadline; a gRPC failure becomes the ApiError of the error table."""
    if options.span is not None:
        options.note_model(getattr(request, "model", ""))
    try:
        reply = await method(request, metadata=options.metadata, timeout=options.timeout_s)
    except grpc.aio.AioRpcError as error:
        raise api_error_from_grpc(error) from None
    if options.span is not None:
        options.note_model("", getattr(reply, "model", ""))
    return reply


def _first_rpc_error(error: BaseException) -> grpc.aio.AioRpcError | None:
    """The first AioRpcError inside a (possibly nested) exception group."""
    if isinstance(error, grpc.aio.AioRpcError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _first_rpc_error(inner)
            if found is not None:
                return found
    return None


class Generation:
    """The Generate calls of one HTTP request, opened and admitted (first responses read)."""

    def __init__(
        self,
        calls: list[grpc.aio.UnaryStreamCall],
        reopen: Callable[[int], grpc.aio.UnaryStreamCall | None] | None = None,
    ) -> None:
        self._calls = calls
        self._firsts: list[pb.GenerateResponse | None] = [None] * len(calls)
        self._reopen = reopen  # a fresh call for index i, None once out of time

    @classmethod
    async def open(
        cls, stub: InferenceStub, requests: Sequence[pb.GenerateRequest], options: CallOptions
    ) -> Generation:
        """Start every call and await each one's first response; raise ApiError if any fails."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + options.timeout_s

        def start(index: int, timeout_s: float) -> grpc.aio.UnaryStreamCall:
            return stub.Generate(
                requests[index],
                metadata=options.call_metadata(index, len(requests)),
                timeout=timeout_s,
            )

        def reopen(index: int) -> grpc.aio.UnaryStreamCall | None:
            left_s = deadline - loop.time()
            return start(index, left_s) if left_s > 0 else None

        generation = cls([start(i, options.timeout_s) for i in range(len(requests))], reopen)
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(generation._read_first(index))
                    for index in range(len(requests))
                ]
        except BaseException as error:
            generation.cancel()
            rpc_error = _first_rpc_error(error)
            if rpc_error is not None:
                raise api_error_from_grpc(rpc_error) from None
            raise
        generation._firsts = [task.result() for task in tasks]
        if options.span is not None:
            options.note_model(requests[0].model, generation.model)
        return generation

    async def _read_first(self, index: int) -> pb.GenerateResponse | None:
        """One call's first response; on UNAVAILABLE (nothing was received yet) the call is
        opened again, round_robin picking the next core, up to OPEN_ATTEMPTS times in all."""
        for attempt in range(1, OPEN_ATTEMPTS + 1):
            try:
                return await self._read(index)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == OPEN_ATTEMPTS:
                    raise
                if self._reopen is None:
                    raise
                await asyncio.sleep(OPEN_RETRY_BACKOFF_S * attempt)
                call = self._reopen(index)
                if call is None:  # the request's deadline has passed
                    raise
                logger.info("core unavailable before the first response (%s); retrying "
                            "(attempt %d of %d)", error.details(), attempt + 1, OPEN_ATTEMPTS)
                self._calls[index] = call
        raise AssertionError("unreachable")

    async def _read(self, index: int) -> pb.GenerateResponse | None:
        """The next response of one call; None at the end of its stream."""
        message = await self._calls[index].read()
        return None if message is grpc.aio.EOF else message

    @property
    def model(self) -> str:
        """The model the core reports in its first responses ("" when it named none)."""
        return next((first.model for first in self._firsts if first and first.model), "")

    @property
    def first_responses(self) -> list[pb.GenerateResponse | None]:
        """Each call's first response, read at admission (None: the call sent nothing)."""
        return list(self._firsts)

    def cancel(self) -> None:
        """Cancel every call still running (the core aborts the request)."""
        for call in self._calls:
            if not call.done():
                call.cancel()

    async def responses(self) -> AsyncIterator[tuple[int, pb.GenerateResponse]]:
        """Every response of every call in arrival order; ApiError on a core failure."""
        # Bounded, so that a slow HTTP client slows the gRPC reads (flow control reaches the core).
        queue: asyncio.Queue[tuple[int, pb.GenerateResponse | Exception | None]] = asyncio.Queue(
            maxsize=QUEUE_SLOTS_PER_CALL * len(self._calls)
        )
        pumps = [asyncio.create_task(self._pump(index, queue)) for index in range(len(self._calls))]
        running = len(pumps)
        try:
            while running:
                index, item = await queue.get()
                if item is None:
                    running -= 1
                elif isinstance(item, grpc.aio.AioRpcError):
                    raise api_error_from_grpc(item)
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield index, item
        finally:
            self.cancel()
            for pump in pumps:
                pump.cancel()

    async def _pump(self, index: int, queue: asyncio.Queue) -> None:
        """Move one call's responses (its first included) into the shared queue."""
        try:
            message = self._firsts[index]
            while message is not None:
                await queue.put((index, message))
                message = await self._read(index)
            await queue.put((index, None))
        except Exception as error:  # handed to the consumer, which raises it
            await queue.put((index, error))
