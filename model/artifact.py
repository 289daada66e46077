"""The model artifact: export (training side) and checked load (serving side).

STUB — the contract below is fixed; the implementation is being written.

Layout of ``artifacts/<model_version>/``::

    manifest.json            format_version, model_version, created_at, backbone {name, family,
                             fingerprint, n_layers, hidden_size, max_length, length_buckets},
                             views (ViewSet.to_json), head (HeadConfig.to_json), features file,
                             activation_dtype, rating range, platforms, library versions,
                             training config, files {relative path: sha256}
    backbone.jaxexport       jax.export: (params, input_ids[b,l] int32, mask[b,l] int32)
                             -> pooled [b, n_layers, d] float32; symbolic b and l; cpu + cuda
    backbone.safetensors     its parameters, flattened "a/b/c" keys
    head.jaxexport           jax.export: (params, ids[b,F] int32, multi_hot[b,G] float32,
                             activations[b, n_views, n_layers, d] float32)
                             -> (adapters[b, A] float32, rating[b] float32); symbolic b
    head.safetensors
    tokenizer.json | spiece.model
    features.json            FeatureSpec.to_json
    users.parquet, items.parquet   entity tables (canonical schema of training.data)
    reference.safetensors    drift reference statistics (see ReferenceStats)
    report.json, report.md, plots/*.png

``artifacts/latest`` is a symlink to the newest version directory.
The loader imports nothing from ``training``.
"""
