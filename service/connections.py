"""Slow and idle clients: a deadline for receiving each whole request, a bound on connections.

uvicorn closes a connection that stays idle *after* a response (``timeout_keep_alive``), but
arms nothing before the first request, and every byte received resets its timer: a client
that connects and sends nothing, or trickles its request line, headers or body a byte every
few seconds, holds its connection for as long as it likes, and nothing bounds how many such
connections there are (uvicorn #157, #1192). These bytes arrive before ASGI sees anything,
so the fix lives in the HTTP protocol: :class:`GuardedHttpProtocol` is uvicorn's
httptools protocol (what uvicorn picks itself with ``uvicorn[standard]``) with two rules,
applied by ``python -m service``:

* **Receive deadline** (``LEVI_RECEIVE_TIMEOUT_S``): a request must arrive whole (request
  line, headers and body) within the deadline: a connection's first request counted from the
  moment the connection opened, each later one from its first byte. Bytes trickling in do
  not extend it. At the
  deadline, a request that was partly received is answered ``408`` with a JSON message and
  ``Connection: close`` (then the server's side is closed and what the client still sends is
  dropped for up to ``LINGER_S``, so that a reset cannot destroy the answer: a lingering
  close); a connection that sent nothing is closed without an answer. Time the
  app spends computing an answer is not counted (``LEVI_REQUEST_TIMEOUT_S`` bounds that); an
  idle keep-alive connection is closed by uvicorn's keep-alive timeout as before.
* **Connection bound** (``LEVI_MAX_CONNECTIONS``, per process: per worker with
  ``--workers N``): a connection opened while the bound is reached is not served. Its request
  is read (so that closing leaves nothing unread, which would reset the connection and could
  lose the answer) and answered ``503`` with ``Retry-After: 1``, a JSON message and
  ``Connection: close``; one that has not sent its whole request within
  ``REFUSED_GRACE_S`` (1 s) is closed without an answer. ``GET /healthz``, ``/readyz`` and
  ``/metrics`` are answered even beyond the bound, so that probes do not restart a pod that
  is only busy and scrapes show the overload.

The app hands its :class:`ConnectionPolicy` (settings and metrics) to the protocol through
the ASGI lifespan state (service/app.py), so the protocol and the app read the same settings.
Run without that state (another app), the protocol behaves as uvicorn's own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.metrics import Metrics

log = logging.getLogger(__name__)

POLICY_STATE_KEY = "levi.connection_policy"  # key of the lifespan state
# Set in a request's scope["extensions"] when the deadline cut its body short.
RECEIVE_TIMEOUT_EXTENSION = "levi.receive_timeout"
# After a connection's last answer (a 408 or 503), how long the server still reads and drops
# what the client sends before it closes. Closing a socket with unread bytes sends a reset,
# which can destroy the answer before the client reads it (a slow client's next byte arriving
# at the deadline); so the server first closes its sending side and drains, as Apache's and
# nginx's lingering close do.
LINGER_S = 2.0
REFUSED_GRACE_S = 1.0  # a connection beyond the bound must send its request within this
RETRY_AFTER_S = 1
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # answered beyond the bound
LOG_EVERY_S = 10.0  # refusals and timeouts are logged at most this often (with counts)

DESCRIBE = {
    "refused": "connection(s) refused beyond the bound",
    "timeout": "connection(s) closed at the receive deadline",
}


@dataclass
class ConnectionPolicy:
    """What the HTTP protocol enforces, and this process's open connections.

    Args:
        receive_timeout_s: the receive deadline (``LEVI_RECEIVE_TIMEOUT_S``).
        max_connections: connections served at once (``LEVI_MAX_CONNECTIONS``).
        metrics: where connections, refusals and timeouts are counted.
    """

    receive_timeout_s: float
    max_connections: int
    metrics: Metrics | None = None
    admitted: set[Any] = field(default_factory=set)  # protocols within the bound
    _pending_log: dict[str, int] = field(default_factory=dict)
    _logged_at: float = 0.0

    def note(self, what: str) -> None:
        """Count ``what`` ("refused", "timeout") for the next rate-limited log line."""
        self._pending_log[what] = self._pending_log.get(what, 0) + 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            counts, self._pending_log = self._pending_log, {}
            log.warning(
                "slow or surplus clients: %s (limits: LEVI_RECEIVE_TIMEOUT_S=%g, "
                "LEVI_MAX_CONNECTIONS=%d per process; %d connections open)",
                ", ".join(f"{n} {DESCRIBE[k]}" for k, n in sorted(counts.items())),
                self.receive_timeout_s,
                self.max_connections,
                len(self.admitted),
            )


def _json_response(status: int, detail: str, extra: list[tuple[bytes, bytes]]) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    head = [STATUS_LINE[status]]
    for name, value in [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *extra,
    ]:
        head += [name, b": ", value, b"\r\n"]
    return b"".join([*head, b"\r\n", body])


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a receive deadline and a connection bound
    (see the module docstring); pass it as ``uvicorn.run(..., http=GuardedHttpProtocol)``."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._receiving = False  # a request has begun and is not complete
        self._head_done = False  # ... and its request line and headers are complete
        self._refused = False
        self._lingering: asyncio.TimerHandle | None = None  # answered; dropping input

    @property
    def policy(self) -> ConnectionPolicy | None:
        return self.app_state.get(POLICY_STATE_KEY)

    # -- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        policy = self.policy
        if policy is None:
            return
        if len(policy.admitted) >= policy.max_connections:
            self._refused = True
            self.app = self._refuse  # every request of this connection
        else:
            policy.admitted.add(self)
            if policy.metrics is not None:
                policy.metrics.open_connections.set(len(policy.admitted))
        self._arm(self._budget(policy))

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._lingering is not None:
            self._lingering.cancel()
        policy = self.policy
        if policy is not None and self in policy.admitted:
            policy.admitted.discard(self)
            if policy.metrics is not None:
                policy.metrics.open_connections.set(len(policy.admitted))
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # The transport moves to another protocol: this one stops watching it.
        self._disarm()
        policy = self.policy
        if policy is not None:
            policy.admitted.discard(self)
            if policy.metrics is not None:
                policy.metrics.open_connections.set(len(policy.admitted))
        super().handle_websocket_upgrade()

    # -- the receive deadline -------------------------------------------------------------

    def _budget(self, policy: ConnectionPolicy) -> float:
        """Seconds a request (or a new connection's first one) may take to arrive."""
        if self._refused:
            return min(REFUSED_GRACE_S, policy.receive_timeout_s)
        return policy.receive_timeout_s

    def _arm(self, seconds: float) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(seconds, self._deadline_passed)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:  # answered and closing: what still comes is dropped
            return
        super().data_received(data)
        policy = self.policy
        if (
            policy is None
            or self._deadline is not None
            or self._receiving
            or self.transport is None
            or self.transport.is_closing()
            or getattr(self, "timeout_keep_alive_task", None) is not None
            or (self.cycle is not None and not self.cycle.response_complete)
        ):
            return
        # Bytes that began no request (blank lines between requests, which the parser skips)
        # cancelled uvicorn's keep-alive timer: watch the idle connection again, or it would
        # stay open for ever and hold a slot of the connection bound.
        self._arm(self._budget(policy))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._receiving, self._head_done = True, False
        policy = self.policy
        if policy is not None:
            self._arm(self._budget(policy))

    def on_headers_complete(self) -> None:
        self._head_done = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._receiving = False
        self._disarm()
        super().on_message_complete()

    def _deadline_passed(self) -> None:
        self._deadline = None
        policy = self.policy
        if policy is None or self.transport is None or self.transport.is_closing():
            return
        current = self._receiving and self._head_done  # self.cycle is this request's
        if (
            self.pipeline
            or self.flow.read_paused
            or (not current and self.cycle is not None and not self.cycle.response_complete)
        ):
            # uvicorn stopped reading (a body waiting for the app) or an earlier request's
            # answer is still being made (pipelining): the server is the slow one, so the
            # client gets more time, and no answer may overtake the earlier one.
            self._arm(self._budget(policy))
            return
        phase = "silent" if not self._receiving else "body" if self._head_done else "headers"
        cycle = self.cycle if current else None
        answer = phase != "silent" and (cycle is None or not cycle.response_started)
        if cycle is not None and not cycle.response_complete:
            # The app may be waiting for the rest of the body: it reads a disconnect, and
            # whatever it sends is dropped (the answer below is the connection's last); its
            # request metrics record the 408 (service/middleware.py).
            cycle.scope.setdefault("extensions", {})[RECEIVE_TIMEOUT_EXTENSION] = True
            cycle.disconnected = True
            cycle.message_event.set()
        if self._refused:
            policy.note("refused")
            if policy.metrics is not None:
                policy.metrics.connections_refused.inc()
            if answer:
                self.transport.write(self._refusal(policy))
        else:
            policy.note("timeout")
            if policy.metrics is not None:
                policy.metrics.receive_timeouts.labels(phase=phase).inc()
            if answer:
                detail = (
                    f"the request did not arrive whole within {policy.receive_timeout_s:g} s "
                    "(LEVI_RECEIVE_TIMEOUT_S): send the request line, headers and body at "
                    "once; on a slow link, send through a proxy that buffers requests"
                )
                self.transport.write(_json_response(408, detail, self.server_state.default_headers))
        if answer:
            self._close_after_answer()
        else:
            self.transport.close()

    def _close_after_answer(self) -> None:
        """Send the answer and end of stream, drop what the client still sends, and close
        when it closes or after :data:`LINGER_S` (the lingering close)."""
        transport = self.transport
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._lingering = self.loop.call_later(LINGER_S, transport.close)

    def eof_received(self) -> bool | None:
        if self._lingering is not None:
            self.transport.close()  # the client read the answer and closed its side
            return False
        return super().eof_received()

    # -- beyond the bound -----------------------------------------------------------------

    def _refusal_detail(self, policy: ConnectionPolicy) -> str:
        return (
            f"this server process serves at most {policy.max_connections} connections at once "
            f"(LEVI_MAX_CONNECTIONS) and has them open; retry in {RETRY_AFTER_S} s, reusing "
            "a connection, or spread clients over more replicas"
        )

    def _refusal(self, policy: ConnectionPolicy) -> bytes:
        extra = [(b"retry-after", str(RETRY_AFTER_S).encode()), *self.server_state.default_headers]
        return _json_response(503, self._refusal_detail(policy), extra)

    async def _refuse(self, scope: Any, receive: Any, send: Any) -> None:
        """The app of a connection beyond the bound: 503, then the connection closes."""
        if scope.get("path") in EXEMPT_PATHS:
            await self.config.loaded_app(scope, receive, send)
            return
        while True:  # read the body: closing with bytes unread resets the connection
            message = await receive()
            if message["type"] != "http.request":
                return  # gone (or closed at the deadline, which answered)
            if not message.get("more_body", False):
                break
        policy = self.policy
        if policy is None:
            return
        policy.note("refused")
        if policy.metrics is not None:
            policy.metrics.connections_refused.inc()
        body = json.dumps({"detail": self._refusal_detail(policy)}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(RETRY_AFTER_S).encode()),
            (b"connection", b"close"),  # uvicorn closes the connection after the answer
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})
