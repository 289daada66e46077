"""The offline trainer: data, split, activation precompute, training, baselines, report."""
