"""The committed OpenAPI schema (service/openapi.json) and its generator.

Regenerate after an API change with::

    .venv/bin/python -m service.openapi --write

tests/service/test_openapi.py fails while the file and the live schema differ.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from service.app import create_app
from service.settings import Settings

SCHEMA_PATH = Path(__file__).with_name("openapi.json")


def live_schema() -> dict:
    """The app's OpenAPI schema (built without loading a model)."""
    return create_app(Settings(redis_url=None)).openapi()


def render(schema: dict) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="print or --write service/openapi.json")
    parser.add_argument("--write", action="store_true", help=f"write {SCHEMA_PATH}")
    args = parser.parse_args(argv)
    text = render(live_schema())
    if args.write:
        SCHEMA_PATH.write_text(text)
        print(f"wrote {SCHEMA_PATH}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
