"""Safetensors files: the data section aligned for XLA, tensors read in place from a map."""

from __future__ import annotations

import json
import struct

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from model.aligned_arrays import ALIGNMENT
from model.safetensors_file import PAD_KEY, map_tensors, save_tensors

TENSORS = {
    "w": np.arange(12, dtype=np.float32).reshape(3, 4),
    "ids": np.arange(5, dtype=np.int32),
    "empty": np.zeros((0, 3), np.float32),
    "half": np.linspace(0, 1, 7).astype(np.float16),
    "bf": np.linspace(0, 1, 16).astype(ml_dtypes.bfloat16),
    "u32": np.arange(3, dtype=np.uint32),
    "f8": np.linspace(0, 1, 8).astype(ml_dtypes.float8_e4m3fn),
}


def _data_start(path) -> int:
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
    return 8 + size


@pytest.mark.parametrize("names", [1, 2, 3, 5, 7])
def test_data_section_starts_aligned_for_any_header(tmp_path, names):
    # headers of several lengths: the padding adapts to each
    tensors = dict(list(TENSORS.items())[:names])
    save_tensors(tensors, tmp_path / "t.safetensors")
    assert _data_start(tmp_path / "t.safetensors") % ALIGNMENT == 0
    mapped = map_tensors(tmp_path / "t.safetensors")
    assert mapped.keys() == tensors.keys()
    plain = {k: v for k, v in tensors.items() if k != "f8"}  # safetensors.numpy has no float8
    save_tensors(plain, tmp_path / "plain.safetensors")
    loaded = load_file(str(tmp_path / "plain.safetensors"))  # still plain safetensors
    for name, value in tensors.items():
        np.testing.assert_array_equal(mapped[name], value)
        if name in plain:
            np.testing.assert_array_equal(loaded[name], value)


def test_map_tensors_gives_read_only_views_equal_to_the_file(tmp_path):
    save_tensors(TENSORS, tmp_path / "t.safetensors")
    mapped = map_tensors(tmp_path / "t.safetensors")
    assert mapped.keys() == TENSORS.keys()
    for name, value in TENSORS.items():
        assert mapped[name].dtype == value.dtype and mapped[name].shape == value.shape
        np.testing.assert_array_equal(mapped[name], value)
        assert not mapped[name].flags.writeable
    # the largest tensor sits at the aligned start of the data section: XLA uses it in place
    w = mapped["w"]
    assert w.ctypes.data % ALIGNMENT == 0
    assert jax.device_put(w).unsafe_buffer_pointer() == w.ctypes.data
    raw = (tmp_path / "t.safetensors").read_bytes()
    header = json.loads(raw[8 : _data_start(tmp_path / "t.safetensors")])
    assert PAD_KEY in header["__metadata__"]


def test_map_tensors_reads_files_of_other_writers(tmp_path):
    # an unaligned file (safetensors' own writer, as artifacts exported before this change)
    save_file({"w": TENSORS["w"], "ids": TENSORS["ids"]}, str(tmp_path / "old.safetensors"))
    mapped = map_tensors(tmp_path / "old.safetensors")
    np.testing.assert_array_equal(mapped["w"], TENSORS["w"])
    np.testing.assert_array_equal(np.asarray(jax.device_put(mapped["ids"])), TENSORS["ids"])
    save_file({}, str(tmp_path / "none.safetensors"))
    assert map_tensors(tmp_path / "none.safetensors") == {}


def test_map_tensors_refuses_a_broken_file_naming_it(tmp_path):
    save_tensors(TENSORS, tmp_path / "t.safetensors")
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 8])
    with pytest.raises(ValueError, match=r"cut\.safetensors is not a valid safetensors file"):
        map_tensors(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file at all")
    with pytest.raises(ValueError, match="junk.safetensors"):
        map_tensors(tmp_path / "junk.safetensors")


def test_a_map_without_random_reads_reads_the_same(tmp_path):
    save_tensors(TENSORS, tmp_path / "t.safetensors")
    mapped = map_tensors(tmp_path / "t.safetensors", random_reads=False)
    for name, value in TENSORS.items():
        np.testing.assert_array_equal(mapped[name], value)


def test_only_the_rows_read_become_resident(tmp_path):
    # 4,096 rows of 4 KiB (16 MiB): reading 10 rows maps about 10 pages, not the file
    table = np.ones((4096, 1024), np.float32)
    save_tensors({"table": table}, tmp_path / "big.safetensors")
    (tmp_path / "big.safetensors").read_bytes()  # in the page cache, as after a checksum
    mapped = map_tensors(tmp_path / "big.safetensors")["table"]
    assert float(sum(mapped[r, 0] for r in range(0, 4096, 410))) == 10.0
    assert _resident_kib(tmp_path / "big.safetensors") <= 10 * 4 * 4  # 4 KiB pages, slack


def _resident_kib(path) -> int:
    total, current = 0, None
    with open("/proc/self/smaps") as f:
        for line in f:
            if line[:1].isalnum() and "-" in line.split()[0] and ":" not in line.split()[0]:
                parts = line.split()
                current = parts[5] if len(parts) > 5 else None
            elif line.startswith("Rss:") and current == str(path):
                total += int(line.split()[1])
    return total
