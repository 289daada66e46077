"""The persistent compilation cache's switch and place, as the trainer and the encode CLI read
them from the environment (the service reads the same variables through its settings)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.compilation_cache import directory_from_env, enable_compilation_cache

ROOT = Path(__file__).parents[2]


def test_on_by_default_in_the_cache_dir_moved_or_turned_off(monkeypatch, tmp_path):
    monkeypatch.setenv("LEVI_CACHE_DIR", str(tmp_path / "cache"))
    assert directory_from_env({}) == tmp_path / "cache" / "xla"
    assert directory_from_env({"LEVI_COMPILATION_CACHE_DIR": "/x/y"}) == Path("/x/y")
    assert directory_from_env({"LEVI_COMPILATION_CACHE_DIR": ""}) == tmp_path / "cache" / "xla"
    for on in ("1", "true", "ON", "yes"):
        assert directory_from_env({"LEVI_COMPILATION_CACHE": on}) == tmp_path / "cache" / "xla"
    for off in ("0", "false", "Off", "no"):
        assert (
            directory_from_env({"LEVI_COMPILATION_CACHE": off, "LEVI_COMPILATION_CACHE_DIR": "/x"})
            is None
        )


def test_a_value_that_is_neither_on_nor_off_names_the_variable():
    for bad in ("maybe", "", " yes"):  # what the service's settings refuse too
        with pytest.raises(ValueError, match=f"LEVI_COMPILATION_CACHE={bad!r}"):
            directory_from_env({"LEVI_COMPILATION_CACHE": bad})


def test_the_service_reads_the_two_variables_as_the_trainer_does(monkeypatch, tmp_path):
    from pydantic import ValidationError

    from service.settings import Settings

    monkeypatch.setenv("LEVI_CACHE_DIR", str(tmp_path / "cache"))
    for env in ({}, {"LEVI_COMPILATION_CACHE_DIR": ""}, {"LEVI_COMPILATION_CACHE_DIR": "/x"}):
        for name in ("LEVI_COMPILATION_CACHE_DIR", "LEVI_COMPILATION_CACHE"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert Settings(redis_url=None).compilation_cache_path() == directory_from_env(env)
    monkeypatch.setenv("LEVI_COMPILATION_CACHE", "off")
    assert Settings(redis_url=None).compilation_cache_path() is None
    for bad in ("maybe", ""):
        monkeypatch.setenv("LEVI_COMPILATION_CACHE", bad)
        with pytest.raises(ValidationError):
            Settings(redis_url=None)


def test_an_unwritable_directory_is_a_warning(tmp_path, caplog):
    (tmp_path / "a-file").write_text("")
    with caplog.at_level("WARNING"):
        assert enable_compilation_cache(tmp_path / "a-file" / "xla") is False
    assert "compilation cache off" in caplog.text and "LEVI_COMPILATION_CACHE=0" in caplog.text


def test_the_trainer_refuses_a_bad_switch_before_any_work(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "training", "--tiny", "--output-dir", str(tmp_path / "out")],
        env={**os.environ, "LEVI_COMPILATION_CACHE": "maybe"},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "LEVI_COMPILATION_CACHE='maybe'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
