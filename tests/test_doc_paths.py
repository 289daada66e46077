"""Docs, comments and docstrings name only files the project has: every ``service/...``,
``model/...``, ``training/...``, ``deploy/...``, ``tests/...``, ``bench/...`` or ``docs/...``
path written in a tracked text file exists (a module may be named without ``.py``)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIRS = "service|model|training|deploy|tests|bench|docs"
# Not inside another path (``/batch/training/spec.toml`` is a container's, not ours).
PATH = re.compile(r"(?<![/\w.-])((?:" + DIRS + r")/[A-Za-z0-9_./-]*\w)([{\\])?")
TEXT = (".py", ".md", ".toml", ".yml", ".yaml", ".json", "Makefile", "Dockerfile")


def tracked_text_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / f for f in out if f.endswith(TEXT)]


def dangling(text: str) -> set[str]:
    """The repo paths ``text`` names that do not exist (templates such as ``x_{k}`` pass)."""
    out = set()
    for m in PATH.finditer(text):
        if m.group(2):  # a template (``x_{k}``) or a regular expression (``x\\.sh``)
            continue
        path = m.group(1).rstrip(".")
        if not (ROOT / path).exists() and not (ROOT / f"{path}.py").exists():
            out.add(path)
    return out


def test_the_check_finds_a_dangling_path():
    absent = "service/" + "no_such_module.py"  # split: this file is checked too
    assert dangling(f"see {absent} and service/app.py") == {absent}
    assert dangling("tests/assets/t5_v1_{version}.npz") == set()
    assert dangling(r"bash deploy/podman/stack-test\.sh$") == set()
    assert dangling("--config /batch/training/spec.toml") == set()


def test_every_named_path_exists():
    problems = {}
    for file in tracked_text_files():
        if not file.exists():  # deleted in the work tree, not yet in the index
            continue
        missing = dangling(file.read_text(errors="replace"))
        if missing:
            problems[str(file.relative_to(ROOT))] = sorted(missing)
    assert not problems, problems
