"""Request-id and body-size middleware (pure ASGI, so streaming and disconnects pass through).

Owns `x-request-id`: taken from the incoming header when it is sane (printable ASCII, at most
128 characters, so it is also valid gRPC metadata) or a fresh uuid4 hex; stored on
`request.state.request_id` and in `facade.logs.request_id_var` (so every log line written while
the request is handled, its stream included, carries it); added to every response, errors and
unknown routes included. An exception nothing else handled becomes the 500 envelope here, so
even that carries the id (Anthropic's envelope on the Messages API's paths, as every error).

Body size: a declared `Content-Length` over the limit is answered 413 at once; a chunked body
that grows past it raises a 413 `HTTPException` from `receive`, which FastAPI re-raises and the
app's handler renders. (Starlette's own limiter answers in plain text, hence this one.)

Trace id: a valid W3C `traceparent` puts its trace id on the request's log lines (`trace_id`,
`tandem.logs.trace_id_var`); facade/tracing.py replaces it with its span's when tracing is on.
"""

from __future__ import annotations

import logging
import re
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facade.errors import ApiError, error_response, internal_error
from facade.logs import request_id_var
from tandem.logs import trace_id_var
from tandem.tracing import parse_traceparent  # stdlib only

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
_SANE_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")


def incoming_request_id(scope: Scope) -> str | None:
    """The client's x-request-id if it is usable as-is, else None."""
    value = Headers(scope=scope).get(REQUEST_ID_HEADER)
    if value is not None and _SANE_REQUEST_ID.fullmatch(value):
        return value
    return None


class RequestIdMiddleware:
    """Assigns a request id to every HTTP request and returns it on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        token = request_id_var.set(request_id)
        # the client's W3C trace id on the request's log lines (facade/tracing.py may replace it)
        trace_token = trace_id_var.set(parse_traceparent(Headers(scope=scope).get("traceparent")))
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unhandled error in request %s", request_id)
            if response_started:
                raise
            await error_response(internal_error(), scope.get("path", ""))(
                scope, receive, send_with_id)
        finally:
            trace_id_var.reset(trace_token)
            request_id_var.reset(token)


def _too_large(max_body_bytes: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is larger than {max_body_bytes} bytes.",
        code="request_too_large",
    )


class BodySizeLimitMiddleware:
    """Rejects request bodies larger than `max_body_bytes` with the 413 envelope."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            too_large = error_response(_too_large(self.max_body_bytes), scope.get("path", ""))
            await too_large(scope, receive, send)
            return
        received_bytes = 0

        async def receive_with_limit() -> Message:
            nonlocal received_bytes
            message = await receive()
            if message["type"] == "http.request":
                received_bytes += len(message.get("body", b""))
                if received_bytes > self.max_body_bytes:
                    raise HTTPException(413, _too_large(self.max_body_bytes).message)
            return message

        await self.app(scope, receive_with_limit, send)
