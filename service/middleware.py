"""ASGI middleware: every request's envelope (its id, its body size limit, its metrics)."""

from __future__ import annotations

import itertools
import json
import os
import re
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import logs
from service.connections import RECEIVE_TIMEOUT_EXTENSION
from service.metrics import Metrics, labelled

MAX_REQUEST_ID_LENGTH = 128
# Ids a caller may choose: UUIDs, hex, base64url, dotted or colon-separated trace ids. Nothing
# that could break a log line or a header (spaces, quotes, control characters).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@+=/-]+")


def accepted_request_id(value: bytes | None) -> str | None:
    """The caller's request id, cut to 128 characters, or None when it is empty or has
    characters outside ``A-Z a-z 0-9 . _ : @ + = / -`` (a fresh id is used instead)."""
    if not value:
        return None
    try:
        text = value.decode("ascii").strip()[:MAX_REQUEST_ID_LENGTH]
    except UnicodeDecodeError:
        return None
    return text if _REQUEST_ID.fullmatch(text) else None


_ID_PREFIX = uuid.uuid4().hex[:16]  # this process's; a forked worker draws its own below
_id_counter = itertools.count(1)


def _new_prefix_after_fork() -> None:
    global _ID_PREFIX, _id_counter
    _ID_PREFIX, _id_counter = uuid.uuid4().hex[:16], itertools.count(1)


os.register_at_fork(after_in_child=_new_prefix_after_fork)


def new_request_id() -> str:
    """A request id unique across processes and restarts: 16 random hex digits drawn once
    per process, then a 16-hex-digit counter (the same length and alphabet as a uuid4 hex)."""
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


class BodyTooLargeError(HTTPException):
    """Raised from ``receive`` mid-stream; an HTTPException so FastAPI's body parsing passes
    it through (any other exception there becomes a generic 400)."""

    def __init__(self, max_bytes: int):
        super().__init__(413, too_large_detail(max_bytes))


def too_large_detail(max_bytes: int) -> str:
    """The 413 answer's detail, whether Content-Length or the streamed body was too large."""
    return f"request body is larger than the limit of {max_bytes} bytes"


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestEnvelopeMiddleware:
    """Every HTTP request's envelope, in one ASGI layer: its id, its body-size limit and its
    metrics (one layer instead of three: each layer costs a coroutine per request and a
    wrapper per message sent, about 4% of a warm prediction's time; docs/PROFILING.md).

    - **Request id**: every response carries an ``X-Request-ID``: the request's own when
      acceptable (:func:`accepted_request_id`), else a new one: 32 hex digits, a random prefix
      drawn once per process and a counter (:func:`new_request_id`; unique without a system
      call per request, which ``uuid4`` makes). The id is in ``scope["state"]["request_id"]``
      (``request.state.request_id``) and in :data:`service.logs.request_id` while the request
      is handled, so log lines carry it.
    - **Body limit**: 413 for a body over ``max_bytes``, by Content-Length (before the app
      runs) or while a body without one streams in (:class:`BodyTooLargeError` from
      ``receive``); 400 for a Content-Length that is not an integer.
    - **Metrics**: requests counted by route template and status, and timed (ids never
      become labels); a request whose body never came counts as the 408 its client got.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, max_bytes: int):
        self.app = app
        self.metrics = metrics
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        given = length = None
        for name, value in scope["headers"]:
            if name == b"x-request-id" and given is None:  # the first one, as before
                given = value
            elif name == b"content-length":
                length = value
        rid = accepted_request_id(given) or new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        id_header = (b"x-request-id", rid.encode())
        status, started = 500, False

        async def envelope_send(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                headers = [h for h in message.get("headers", []) if h[0].lower() != id_header[0]]
                message = {**message, "headers": [*headers, id_header]}
            await send(message)

        token = logs.request_id.set(rid)
        try:
            if length is not None:  # the server delivers no more than Content-Length says
                try:
                    too_large = int(length) > self.max_bytes
                except ValueError:
                    await _send_json(envelope_send, 400, "Content-Length header is not an integer")
                    return
                if too_large:
                    await _send_json(envelope_send, 413, too_large_detail(self.max_bytes))
                    return
                app_receive = receive
            else:
                seen = 0

                async def app_receive() -> Message:
                    nonlocal seen
                    message = await receive()
                    if message["type"] == "http.request":
                        seen += len(message.get("body", b""))
                        if seen > self.max_bytes:
                            raise BodyTooLargeError(self.max_bytes)
                    return message

            try:
                await self.app(scope, app_receive, envelope_send)
            except BodyTooLargeError:
                if not started:
                    await _send_json(envelope_send, 413, too_large_detail(self.max_bytes))
            finally:
                if scope.get("extensions", {}).get(RECEIVE_TIMEOUT_EXTENSION):
                    status = 408  # the body never came: the client got 408, whatever was sent
                route = scope.get("route")
                endpoint = getattr(route, "path", None) or "unmatched"
                labelled(self.metrics.requests, endpoint, str(status)).inc()
                duration = time.perf_counter() - t0
                labelled(self.metrics.request_duration, endpoint).observe(duration)
        finally:
            logs.request_id.reset(token)
