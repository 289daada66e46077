"""Safetensors files as the artifact writes and reads them: ordinary file modes, an aligned
data section, and tensors read in place from a memory map.

Writing. ``safetensors.numpy.save_file`` (0.8 and later) writes through a temporary file that
is created 0600 whatever the umask, and renames it into place, so every file it writes is
readable by its owner only. An artifact trained on a host and mounted into the container
(which runs as another user, uid 10001) then cannot be loaded. :func:`save_tensors` writes
the same format and gives the file the mode an ordinary ``open(path, "w")`` would have: 0666
less the process umask (or what a default ACL on the directory says).

Alignment. The format is an 8-byte header length, a JSON header, then every tensor's bytes
back to back. :func:`save_tensors` pads the header (a ``__metadata__`` entry, which readers
ignore) so that the data section starts at a multiple of 64 bytes, XLA's CPU buffer
alignment (``model.aligned_arrays``). A tensor whose offset in the data section is also a
multiple of 64 (every one of a MiniLM or BERT checkpoint: their sizes are multiples of 64
bytes) then sits aligned in a memory map of the file.

Reading in place. :func:`map_tensors` returns read-only numpy views on a memory map of the
file, after ``safetensors.safe_open`` has checked the header. ``jax.device_put`` of an aligned
view uses the mapped pages as they are (no copy), so a served model's weights are page cache,
shared by every worker process that maps the same file, and only the pages read are resident
(a backbone's word embeddings: the rows of the tokens seen; docs/PROFILING.md, "Sixth pass").
The file must not be rewritten in place while mapped (the exporter writes a new directory and
renames it into place; a deleted file stays readable while mapped).
"""

from __future__ import annotations

import json
import mmap
import os
import stat
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from model.aligned_arrays import ALIGNMENT

# The header key that pads it to the alignment (safetensors keeps string metadata as is).
PAD_KEY = "levi_alignment_padding"
# safetensors dtype codes -> numpy
DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
}

# the narrow floats numpy has through ml_dtypes (a jax dependency)
ML_DTYPES = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def save_tensors(tensors: Mapping[str, np.ndarray], path: str | Path) -> None:
    """``safetensors.numpy.save_file(tensors, path)`` with an ordinary file's mode and the
    data section starting at a multiple of ``ALIGNMENT`` bytes.

    Args:
        tensors: ``{name: array}`` of numeric arrays.
        path: the file to write; an existing file is replaced and keeps its mode.

    Raises:
        whatever ``save_file`` raises (a failed write leaves no new file behind).
    """
    from safetensors.numpy import save_file

    path = Path(path)
    existed = path.exists()
    # Create (not truncate) the file as any other writer would: the kernel applies the
    # umask and default ACLs, and the mode it ends up with is the one to keep.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o666))
    mode = stat.S_IMODE(path.stat().st_mode)
    tensors = dict(tensors)
    try:
        save_file(tensors, str(path), metadata={PAD_KEY: ""})
        # The header's length does not depend on the padding's value other than through its
        # length, so one more write with the right padding aligns the data section.
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            used = len(f.read(size).rstrip(b" "))
        # safetensors pads the JSON to 8 bytes; a JSON length of 56 modulo 64 needs none and
        # puts the data at 8 + 56 = 0 modulo 64.
        pad = (ALIGNMENT - 8 - used) % ALIGNMENT
        if pad:
            save_file(tensors, str(path), metadata={PAD_KEY: "0" * pad})
    except BaseException:
        if not existed:
            path.unlink(missing_ok=True)
        raise
    os.chmod(path, mode)


def map_tensors(path: str | Path, *, random_reads: bool = True) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a read-only view on a memory map of it.

    Args:
        path: a safetensors file (any writer's; aligned ones are what make ``device_put``
            zero-copy).
        random_reads: pages come in one at a time, as read (see
            :func:`_map_for_random_reads`): for weights used in place, of which an embedding
            table is read a few rows at a time. False for weights copied whole elsewhere (to
            an accelerator), where readahead is what is wanted.

    Returns:
        ``{name: array}`` in the file's dtypes (bfloat16 through ``ml_dtypes``); the views
        keep the map open.

    Raises:
        ValueError: the file is not valid safetensors (the library's message), or holds a
            dtype numpy cannot view.
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy"):
            pass  # the library's checks of the header (offsets, sizes, dtypes)
    except Exception as e:  # safetensors raises its own error type on bad headers
        raise ValueError(f"{path} is not a valid safetensors file ({e})") from e
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        if path.stat().st_size == 8 + size:  # no tensor bytes: mmap cannot map nothing
            data = memoryview(b"")
        else:
            mapped = (
                _map_for_random_reads(f.fileno())
                if random_reads
                else mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            )
            data = memoryview(mapped)[8 + size :]
    out: dict[str, np.ndarray] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = _dtype(entry["dtype"], path, name)
        begin, end = entry["data_offsets"]
        count = (end - begin) // dtype.itemsize
        out[name] = np.frombuffer(data, dtype, count, begin).reshape(entry["shape"])
    return out


def _map_for_random_reads(fd: int) -> mmap.mmap:
    """A read-only shared map of ``fd`` whose pages come in one at a time, as read.

    A page fault on a file map brings in the whole page-cache folio around the page (up to
    2 MiB after a sequential read, such as the artifact's sha256 check), so ten reads of a
    word-embedding table's rows made 13 MB of it resident and a thousand reads all of it.
    Dropping the file's cached pages that no process maps (``POSIX_FADV_DONTNEED``) and
    turning readahead off (``MADV_RANDOM``) makes each first read bring in its own 4 KiB
    page: a thousand rows, 4 MB (docs/PROFILING.md, "Sixth pass")."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    if hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    return mapped


def _dtype(code: str, path: Path, name: str) -> np.dtype:
    if code in ML_DTYPES:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, ML_DTYPES[code]))
    if code not in DTYPES:
        raise ValueError(f"{path}: tensor {name!r} has dtype {code}, which numpy cannot view")
    return np.dtype(DTYPES[code])
