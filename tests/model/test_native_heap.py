"""model/native_heap.py: the malloc arena cap reaches this process and the ones it starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from model import native_heap as memory


@pytest.fixture
def restore_env():
    before = os.environ.get("MALLOC_ARENA_MAX")
    yield
    if before is None:
        os.environ.pop("MALLOC_ARENA_MAX", None)
    else:
        os.environ["MALLOC_ARENA_MAX"] = before


@pytest.mark.skipif(memory._glibc() is None, reason="not glibc")
def test_the_cap_is_applied_here_and_passed_on(restore_env):
    os.environ.pop("MALLOC_ARENA_MAX", None)
    assert memory.limit_malloc_arenas(3) is True
    assert os.environ["MALLOC_ARENA_MAX"] == "3"
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ['MALLOC_ARENA_MAX'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == "3"


@pytest.mark.skipif(memory._glibc() is None, reason="not glibc")
def test_an_operator_setting_wins_and_nonsense_is_refused(restore_env):
    os.environ["MALLOC_ARENA_MAX"] = "5"
    assert memory.limit_malloc_arenas(2) is True
    assert os.environ["MALLOC_ARENA_MAX"] == "5"
    os.environ["MALLOC_ARENA_MAX"] = "many"
    assert memory.limit_malloc_arenas(2) is False


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(memory._glibc() is None, reason="not glibc")
def test_freed_heap_in_the_middle_goes_back_to_the_os():
    """What a training stage or a warm-up frees among live blocks stays resident until
    released (glibc trims only the top of the heap by itself)."""
    blocks = [bytearray(64 * 1024) for _ in range(1500)]  # ~96 MB below the mmap threshold
    for b in blocks:
        b[::4096] = b"x" * len(b[::4096])  # touch every page
    keep = blocks[9::10]  # every tenth stays alive: the heap cannot shrink from its top
    del blocks
    before = _rss()
    assert memory.release_free_heap() is True
    assert before - _rss() > 40 * 1024 * 1024
    del keep


def test_a_trim_after_the_first_starts_no_process(monkeypatch):
    # find_library runs `ldconfig -p` as a child process: the service trims when idle (up to
    # once a second), so the library must be looked up once, not per trim.
    memory.release_free_heap()

    def refuse(*args, **kwargs):
        raise AssertionError(f"a process was started: {args[:1]}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    for _ in range(3):
        memory.release_free_heap()
