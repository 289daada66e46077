"""JAX's persistent compilation cache: compiled XLA executables kept on disk.

The service, the batch CLI, the trainer and ``python -m model.encode`` share one cache and
read the same two environment variables (the service through its settings):

- ``LEVI_COMPILATION_CACHE``: on unless ``0`` / ``false`` / ``off`` / ``no``;
- ``LEVI_COMPILATION_CACHE_DIR``: where it lives; unset = ``<LEVI_CACHE_DIR or the user cache
  dir>/xla`` (e.g. ``~/.cache/levi-serve/xla``).

Entries are keyed by the program, the jaxlib version and the CPU's features, and programs take
parameters as arguments: a restart, a new replica, or a second training run with the same
backbone loads executables instead of compiling them (about 0.35 s per backbone shape on 2
cores; docs/BENCHMARKS.md, "Encoder").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

ENABLED_ENV = "LEVI_COMPILATION_CACHE"
DIRECTORY_ENV = "LEVI_COMPILATION_CACHE_DIR"
# The values pydantic reads as a bool (the service's settings), in any case.
_OFF = frozenset({"0", "false", "off", "no", "n", "f"})
_ON = frozenset({"1", "true", "on", "yes", "y", "t"})


def default_directory() -> Path:
    """``<LEVI_CACHE_DIR or the user cache dir>/xla``."""
    from model.packaged import cache_dir

    return cache_dir() / "xla"


def directory_from_env(environ: Mapping[str, str] | None = None) -> Path | None:
    """The cache directory the environment asks for, or None when it turns the cache off.

    Raises:
        ValueError: ``LEVI_COMPILATION_CACHE`` is neither an on nor an off value.
    """
    env = os.environ if environ is None else environ
    flag = env.get(ENABLED_ENV, "1").lower()
    if flag in _OFF:
        return None
    if flag not in _ON:
        raise ValueError(
            f"{ENABLED_ENV}={env[ENABLED_ENV]!r}: expected 1 / true / on or 0 / false / off"
        )
    chosen = env.get(DIRECTORY_ENV)
    return Path(chosen) if chosen else default_directory()  # set but empty: the default


def enable_compilation_cache(directory: Path) -> bool:
    """Keep compiled XLA executables in ``directory`` for this process (every size and
    compile time: a backbone shape is a few hundred KiB on disk).

    Returns:
        False (with a warning: the process compiles as without a cache) when the directory
        cannot be created or written, e.g. on a read-only filesystem.
    """
    import jax

    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        log.warning(
            "compilation cache off: %s is not writable (%s); set %s to a writable directory, "
            "or %s=0 to silence this",
            directory,
            e,
            DIRECTORY_ENV,
            ENABLED_ENV,
        )
        return False
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return True


def enable_from_env(environ: Mapping[str, str] | None = None) -> Path | None:
    """:func:`enable_compilation_cache` where the environment asks for it (the trainer's and
    the encode CLI's entry); returns the directory in use, or None.

    Raises:
        ValueError: as :func:`directory_from_env`.
    """
    directory = directory_from_env(environ)
    if directory is None or not enable_compilation_cache(directory):
        return None
    return directory
