"""ASGI middleware: request ids, request body size limit and per-route request metrics."""

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


class RequestIdMiddleware:
    """Give every response an ``X-Request-ID``: the request's own when acceptable
    (:func:`accepted_request_id`), else a new one: 32 hex digits, a random prefix drawn once
    per process and a counter (:func:`new_request_id`; unique without a system call per
    request, which ``uuid4`` makes).

    The id is in ``scope["state"]["request_id"]`` (``request.state.request_id``) and in
    :data:`service.logs.request_id` while the request is handled, so log lines carry it.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        rid = accepted_request_id(given) or new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        header = (b"x-request-id", rid.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != header[0]]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        token = logs.request_id.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            logs.request_id.reset(token)


class BodyTooLargeError(HTTPException):
    """Raised from ``receive`` mid-stream; an HTTPException so FastAPI's body parsing passes
    it through (any other exception there becomes a generic 400)."""

    def __init__(self, max_bytes: int):
        super().__init__(413, f"request body is larger than the limit of {max_bytes} bytes")


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


class BodyLimitMiddleware:
    """Answer 413 to bodies over ``max_bytes``, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"request body is larger than the limit of {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_large = int(value) > self.max_bytes
                except ValueError:
                    await _send_json(send, 400, "Content-Length header is not an integer")
                    return
                if too_large:
                    await _send_json(send, 413, self._message())
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLargeError(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError:
            if not started:
                await _send_json(send, 413, self._message())


class MetricsMiddleware:
    """Count requests by route template and status; time them (ids never become labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            if scope.get("extensions", {}).get(RECEIVE_TIMEOUT_EXTENSION):
                status = 408  # the body never came: the client got 408, whatever the app said
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            labelled(self.metrics.requests, endpoint, str(status)).inc()
            labelled(self.metrics.request_duration, endpoint).observe(time.perf_counter() - t0)
