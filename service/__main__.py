"""``python -m service [--host H] [--port P] [--model DIR] [--workers N] [--challenger DIR
[--canary SHARE] [--shadow]]``: serve with uvicorn.

Every other setting comes from the environment (``LEVI_*``, ``REDIS_URL``; see
service/settings.py). Flags given here are passed on as ``LEVI_*`` variables, so each
uvicorn worker process builds the same settings. With ``--workers N`` (N > 1) a fresh shared
directory for metrics and readiness is made for this run and removed at exit
(service/workers.py). Logging: ``LEVI_LOG_LEVEL``, ``LEVI_LOG_FORMAT`` (service/logs.py).
Slow and surplus clients: ``LEVI_RECEIVE_TIMEOUT_S``, ``LEVI_MAX_CONNECTIONS``
(service/connections.py).
"""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn
from pydantic import ValidationError

from model.native_heap import limit_malloc_arenas
from service.connections import GuardedHttpProtocol
from service.logs import log_config
from service.settings import Settings, describe_settings_error
from service.workers import prepare_shared_dir, remove_shared_dir, startup_failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__.split("\n")[0])
    parser.add_argument("--host", help="bind address (LEVI_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (LEVI_PORT, default 8000)")
    parser.add_argument("--model", help="artifact directory (LEVI_MODEL_DIR)")
    parser.add_argument("--workers", type=int, help="worker processes (LEVI_WORKERS)")
    parser.add_argument(
        "--challenger", help="artifact served as challenger (LEVI_CHALLENGER_DIR; GET /v1/models)"
    )
    parser.add_argument(
        "--canary", type=float, help="share of users the challenger answers, 0-1 (LEVI_CANARY)"
    )
    parser.add_argument(
        "--shadow",
        action="store_const",
        const="true",
        help="the challenger also scores the champion's answers, off the request path "
        "(LEVI_SHADOW)",
    )
    args = parser.parse_args(argv)
    for flag, env in (
        ("host", "HOST"),
        ("port", "PORT"),
        ("model", "MODEL_DIR"),
        ("workers", "WORKERS"),
        ("challenger", "CHALLENGER_DIR"),
        ("canary", "CANARY"),
        ("shadow", "SHADOW"),
    ):
        value = getattr(args, flag)
        if value is not None:
            os.environ[f"LEVI_{env}"] = str(value)
    limit_malloc_arenas()  # before any thread starts; the workers inherit it
    try:
        settings = Settings()
    except ValidationError as e:
        print(f"error: {describe_settings_error(e)}", file=sys.stderr)
        return 2
    if not settings.model_dir.exists():
        print(
            f"error: model directory {settings.model_dir} does not exist; train one with "
            "`make train` or pass --model artifacts/<version>",
            file=sys.stderr,
        )
        return 2
    shared = prepare_shared_dir(settings.workers)
    try:
        uvicorn.run(
            "service.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_config=log_config(settings.log_level, settings.log_format),
            log_level=settings.log_level,
            access_log=False,
            # A receive deadline and a connection bound (LEVI_RECEIVE_TIMEOUT_S,
            # LEVI_MAX_CONNECTIONS) that uvicorn's own protocol lacks.
            http=GuardedHttpProtocol,
        )
        if failures := startup_failures(shared):
            print(f"error: no worker could start: {'; '.join(failures)}", file=sys.stderr)
            return 3  # uvicorn's start-up failure status
    finally:
        remove_shared_dir(shared)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
