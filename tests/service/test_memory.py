"""service/memory.py: the malloc arena cap reaches this process and the ones it starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service import memory


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
