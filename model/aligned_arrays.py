"""Host arrays that XLA's CPU client uses in place instead of copying.

``jax.device_put`` of a numpy array on a CPU device aliases the array's memory when its data
is aligned to 64 bytes (XLA's CPU buffer alignment) and copies it otherwise; numpy's own large
allocations sit 16 bytes past a page boundary, so every table the trainer hands to the mesh
was held twice (host and device). The per-text activation tables are the largest of them (for
a catalog of 56,000 texts, MiniLM: 300 MB; 200,000 texts: 1.1 GB), so they are allocated here.
The device array must then be treated as a view: nothing writes to such a host array after it
has been put on a device. The same holds for an argument of a compiled call: an unaligned one
is copied whole on every call (a projection table per ``/rank`` call:
``model.artifact.Artifact.pair_rows``).
"""

from __future__ import annotations

import numpy as np

ALIGNMENT = 64  # bytes: XLA's CPU buffer alignment (tsl::Allocator::kAllocatorAlignment)


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised C-contiguous array of ``shape`` whose data is ``ALIGNMENT``-aligned."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(size + ALIGNMENT, np.uint8)
    start = (-raw.ctypes.data) % ALIGNMENT
    return raw[start : start + size].view(dtype).reshape(shape)


def aligned_zeros(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """Zeros whose data is ``ALIGNMENT``-aligned; pages are mapped lazily, as by ``np.zeros``."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.zeros(size + ALIGNMENT, np.uint8)
    start = (-raw.ctypes.data) % ALIGNMENT
    return raw[start : start + size].view(dtype).reshape(shape)


def is_aligned(array: np.ndarray) -> bool:
    """True when ``jax.device_put`` on a CPU device can share ``array``'s memory."""
    return array.flags.c_contiguous and array.ctypes.data % ALIGNMENT == 0
