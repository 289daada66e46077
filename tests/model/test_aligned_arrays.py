"""Host arrays XLA's CPU client uses in place (model/aligned_arrays.py)."""

from __future__ import annotations

import jax
import numpy as np

from model.aligned_arrays import ALIGNMENT, aligned_empty, is_aligned
from training.precompute import ActivationStore


def test_aligned_arrays_are_shared_by_the_cpu_device_and_others_are_copied():
    shared = aligned_empty((300, 7, 384), np.float16)
    shared[...] = 1.5
    assert shared.ctypes.data % ALIGNMENT == 0 and is_aligned(shared)
    on_device = jax.device_put(shared)
    assert on_device.unsafe_buffer_pointer() == shared.ctypes.data  # one copy in memory
    np.testing.assert_array_equal(np.asarray(on_device), shared)
    plain = np.ones(300 * 7 * 384 + 8, np.float16)[8:]  # 16 bytes past an aligned start
    if not is_aligned(plain):
        assert jax.device_put(plain).unsafe_buffer_pointer() != plain.ctypes.data


def test_the_activation_cache_hands_out_aligned_tables(tmp_path):
    store = ActivationStore(tmp_path, n_layers=3, hidden_size=8)
    values = np.random.default_rng(0).standard_normal((5, 3, 8)).astype(np.float32)
    store.put([f"k{i}" for i in range(5)], values)
    got = store.get(["k3", "k0", "k4"])
    assert is_aligned(got) and got.dtype == np.float16
    np.testing.assert_allclose(got, values[[3, 0, 4]], atol=2e-3)
