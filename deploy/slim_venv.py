"""Leaves out of the serve image's venv what serving never loads (deploy/Dockerfile, target serve).

    python slim_venv.py files SITE_PACKAGES      # after the dependencies are installed
    python slim_venv.py bytecode SITE_PACKAGES   # after the project is installed
    python slim_venv.py strip SITE_PACKAGES      # the train image: test suites, symbol tables

``files``: test suites, C headers and Cython sources; pyarrow's Flight RPC and S3 file system
(pyarrow imports them on demand only, and reports them as unavailable); of scipy only what
jax's CPU LAPACK kernels load (``scipy.linalg``'s LAPACK and BLAS, at the first call of an
exported function); byte-identical copies of a shared library become links; the symbol tables
of the compiled libraries are stripped, except those in ``*.libs`` that auditwheel vendored
(patchelf rewrote them, and strip would break them).

``bytecode``: keeps the compiled bytecode (``.pyc``) of the modules a serving process loads
while it starts, loads a model and answers (imported here the same way), and deletes the rest:
a module loaded later compiles from its source, the same answer a few milliseconds later.

Both end by importing what serving imports, so a build that left out too much fails here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

# scipy: the parts jax's LAPACK initialisation imports (scipy.linalg.cython_lapack and what
# scipy.linalg's __init__ pulls in); the other subpackages are for jax.scipy, which serving
# never calls.
SCIPY_KEEP = {"linalg", "_lib", "__pycache__"}
PYARROW_ON_DEMAND = ("_flight.", "libarrow_flight.", "libarrow_python_flight.", "_s3fs.")
PYARROW_ON_DEMAND += ("libarrow_s3.", "_pyarrow_cpp_tests.")


def _remove(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        size = path.lstat().st_size
        path.unlink()
        return size
    size = sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    shutil.rmtree(path)
    return size


def _remove_tests(site: Path) -> int:
    return sum(_remove(p) for p in [p for p in site.rglob("tests") if p.is_dir()] if p.exists())


def _strip(site: Path) -> int:
    libraries = [
        p
        for p in site.rglob("*.so*")
        if p.is_file()
        and not p.is_symlink()
        and not any(part.endswith(".libs") for part in p.relative_to(site).parts)
    ]
    before = sum(p.stat().st_size for p in libraries)
    for i in range(0, len(libraries), 200):
        subprocess.run(["strip", "--strip-unneeded", *map(str, libraries[i : i + 200])], check=True)
    return before - sum(p.stat().st_size for p in libraries)


def strip_only(site: Path) -> int:
    return _remove_tests(site) + _strip(site)


def slim_files(site: Path) -> int:
    freed = _remove_tests(site)
    pyarrow = site / "pyarrow"
    for name in ("include", "includes", "src"):
        if (pyarrow / name).exists():
            freed += _remove(pyarrow / name)
    for path in list(pyarrow.iterdir()):
        if path.name.startswith(PYARROW_ON_DEMAND) or path.suffix in {".pyx", ".pxd", ".pxi"}:
            freed += _remove(path)
    scipy = site / "scipy"
    for path in list(scipy.iterdir()):
        if path.is_dir() and path.name not in SCIPY_KEEP:
            freed += _remove(path)
    return freed + _link_duplicates(site) + _strip(site)


def _link_duplicates(site: Path) -> int:
    """Wheels hold no links: a library shipped as libX.so, libX.so.N and libX.so.N.M is three
    copies. Each copy becomes a link to the one named by its soname (libX.so.N)."""
    freed = 0
    groups: dict[tuple[Path, str], list[Path]] = {}
    for path in site.rglob("lib*.so*"):
        if path.is_file() and not path.is_symlink():
            stem = path.name.split(".so")[0]
            groups.setdefault((path.parent, stem), []).append(path)
    for paths in groups.values():
        if len(paths) < 2:
            continue
        by_digest: dict[str, list[Path]] = {}
        for path in paths:
            by_digest.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), []).append(path)
        for same in by_digest.values():
            if len(same) < 2:
                continue
            # The soname form (one version number) is what the loader asks for.
            keep = min(same, key=lambda p: (p.name.count(".") != 2, len(p.name)))
            for path in same:
                if path != keep:
                    freed += path.stat().st_size
                    path.unlink()
                    path.symlink_to(keep.name)
    return freed


def _load_dependencies() -> None:
    """What serving imports of its dependencies, and a call of an exported function (jax
    initialises its CPU kernels, LAPACK from scipy.linalg included, at the first one)."""
    import fastapi  # noqa: F401
    import flax.linen  # noqa: F401
    import jax
    import jax.export
    import jax.numpy as jnp
    import pandas  # noqa: F401
    import prometheus_client  # noqa: F401
    import pyarrow.csv  # noqa: F401
    import pyarrow.json  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import pydantic_settings  # noqa: F401
    import redis  # noqa: F401
    import tokenizers  # noqa: F401
    import uvicorn  # noqa: F401

    exported = jax.export.export(jax.jit(lambda x: jnp.tanh(x) @ x.T))(jnp.ones((2, 2)))
    jax.export.deserialize(exported.serialize()).call(jnp.ones((2, 2))).block_until_ready()


def _load_serving() -> None:
    """What a serving process imports: its dependencies, the app and the batch scorer."""
    _load_dependencies()
    import service.__main__  # noqa: F401
    import service.app  # noqa: F401
    import service.batch  # noqa: F401
    import service.gate  # noqa: F401


def slim_bytecode(site: Path) -> int:
    _load_serving()
    loaded = {
        Path(m.__cached__).resolve()
        for m in list(sys.modules.values())
        if isinstance(getattr(m, "__cached__", None), str)
    }
    freed = 0
    for pyc in site.rglob("*.pyc"):
        if pyc.resolve() not in loaded:
            freed += _remove(pyc)
    return freed


def check_imports(what: str) -> None:
    """A fresh interpreter imports what serving imports (a build that left out too much fails)."""
    code = f"import slim_venv; slim_venv.{what}()"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd="/")


def main(argv: list[str]) -> int:
    steps = {
        "files": (slim_files, "_load_dependencies"),
        "bytecode": (slim_bytecode, "_load_serving"),
        "strip": (strip_only, "_load_dependencies"),
    }
    if len(argv) != 2 or argv[0] not in steps:
        print(__doc__, file=sys.stderr)
        return 2
    slim, check = steps[argv[0]]
    freed = slim(Path(argv[1]))
    print(f"slim_venv {argv[0]}: {freed / 2**20:.0f} MiB left out")
    check_imports(check)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
