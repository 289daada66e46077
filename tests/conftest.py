"""Shared fixtures: a tiny synthetic ratings data set and a tiny random text backbone; the
service's tiny artifacts and Redis through support/fixtures.py."""

from __future__ import annotations

import os

import pytest
from support.tiny_data import make_tiny_backbone, make_tiny_dataset, write_tiny_catalog

# The tiny artifacts, the compilation cache and Redis, for every directory (support/).
pytest_plugins = ["support.fixtures"]


@pytest.fixture
def tiny_dataset():
    return make_tiny_dataset()


@pytest.fixture
def tiny_spec(tmp_path):
    """Path of the tiny data set's spec file (files written under tmp_path/data)."""
    return write_tiny_catalog(tmp_path / "data")


@pytest.fixture
def tiny_backbone(tmp_path):
    return make_tiny_backbone(tmp_path)


@pytest.fixture(scope="session", autouse=True)
def _private_compilation_cache(tmp_path_factory):
    """In-process apps cache compiled code in this run's own directory, not the user's
    (the service's default is ~/.cache/levi-serve/xla); an explicit setting is kept."""
    with pytest.MonkeyPatch.context() as mp:
        if not os.environ.get("LEVI_COMPILATION_CACHE_DIR"):
            mp.setenv("LEVI_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("xla-cache")))
        yield
