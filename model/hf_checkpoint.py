"""Reading Hugging Face-format checkpoint directories (config.json, safetensors, tokenizer).

Every failure is a :class:`CheckpointError` that names the directory and the missing file or
mismatched tensor, never a ``KeyError`` from deep inside a conversion.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

TOKENIZER_FILES = ("tokenizer.json", "spiece.model")


class CheckpointError(ValueError):
    """A checkpoint directory is missing a file or holds a tensor of the wrong shape."""


def read_config(directory: str | Path) -> dict:
    """The parsed ``config.json`` of a checkpoint directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{directory}: config.json is missing (expected a Hugging Face-format directory)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    out: dict[str, np.ndarray] = {}
    try:
        # Straight into numpy; numpy has no bfloat16, which the flax framework reads (a device
        # round trip and a compile per dtype: 0.3 s of MiniLM's 0.4 s, so only for those).
        # We keep float32 numpy arrays.
        bf16: list[str] = []
        with safe_open(str(path), framework="numpy") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if f.get_slice(key).get_dtype() == "BF16":
                    bf16.append(key)
                else:
                    out[key] = np.asarray(f.get_tensor(key), dtype=np.float32)
        if bf16:
            with safe_open(str(path), framework="flax") as f:
                for key in bf16:
                    out[key] = np.asarray(f.get_tensor(key), dtype=np.float32)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from None
    return out


def safetensor_files(directory: str | Path) -> list[Path]:
    """The weight files of a checkpoint: one ``model.safetensors`` or the shards of an index."""
    directory = Path(directory)
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({e!r})") from None
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise CheckpointError(
                f"{directory}: shard(s) {missing} named in {index.name} are missing"
            )
        return [directory / s for s in shards]
    raise CheckpointError(
        f"{directory}: no weights found "
        "(expected model.safetensors or model.safetensors.index.json)"
    )


def read_tensors(directory: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint as float32 numpy arrays, keyed by Hugging Face name."""
    tensors: dict[str, np.ndarray] = {}
    for path in safetensor_files(directory):
        tensors.update(_load_safetensors(path))
    return tensors


def tokenizer_file(directory: str | Path) -> Path:
    """``tokenizer.json`` if present, else ``spiece.model``."""
    directory = Path(directory)
    for name in TOKENIZER_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(
        f"{directory}: no tokenizer found (expected one of {', '.join(TOKENIZER_FILES)})"
    )


# Where a checkpoint declares the longest input it takes, in order of precedence: what
# sentence-transformers trained and uses the model with, then the tokenizer's limit, then T5's
# nominal length. (file, field) pairs.
LENGTH_DECLARATIONS = (
    ("sentence_bert_config.json", "max_seq_length"),
    ("tokenizer_config.json", "model_max_length"),
    ("config.json", "n_positions"),
)
# transformers writes int(1e30) as model_max_length when a tokenizer has no limit.
_NO_LIMIT = 10**9
# A relative-position encoder (T5) that declares nothing: the length T5 was pre-trained at.
UNDECLARED_MAX_LENGTH = 512


def declared_max_length(directory: str | Path, hf_config: Mapping) -> tuple[int, str]:
    """The most tokens per text the checkpoint allows, and which file says so.

    The first of ``LENGTH_DECLARATIONS`` present (a ``model_max_length`` of 1e9 or more means
    "no limit" and is skipped), capped by ``config.json`` ``max_position_embeddings`` (the size
    of a learned position table: a hard limit). With nothing declared: that table size, else
    ``UNDECLARED_MAX_LENGTH``.

    Args:
        directory: the checkpoint directory.
        hf_config: its parsed ``config.json`` (:func:`read_config`).

    Returns:
        ``(tokens, source)``, e.g. ``(256, "sentence_bert_config.json max_seq_length")``.

    Raises:
        CheckpointError: a declaring file is not valid JSON or its field is not a positive
            whole number.
    """
    directory = Path(directory)
    declared: tuple[int, str] | None = None
    for name, key in LENGTH_DECLARATIONS:
        data = hf_config if name == "config.json" else _optional_json(directory / name)
        value = (data or {}).get(key)
        if value is None or (_is_number(value) and value >= _NO_LIMIT):
            continue
        declared = (_positive_int(value, directory / name, key), f"{name} {key}")
        break
    positions = hf_config.get("max_position_embeddings")
    if positions is None:
        return declared or (UNDECLARED_MAX_LENGTH, "none declared; T5's pre-training length")
    positions = _positive_int(positions, directory / "config.json", "max_position_embeddings")
    if declared is None or declared[0] > positions:
        return positions, "config.json max_position_embeddings"
    return declared


def _optional_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    return data if isinstance(data, dict) else None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_int(value: object, path: Path, key: str) -> int:
    if not _is_number(value) or not math.isfinite(value) or value < 1:
        raise CheckpointError(
            f"{path}: {key} is {value!r}; expected a positive number of tokens (fix the field "
            "or delete it)"
        )
    if value != int(value):
        raise CheckpointError(f"{path}: {key} is {value!r}; expected a whole number of tokens")
    return int(value)


def take(
    tensors: Mapping[str, np.ndarray],
    name: str,
    shape: tuple[int, ...],
    *,
    source: str | Path = "checkpoint",
    aliases: tuple[str, ...] = (),
) -> np.ndarray:
    """Tensor ``name`` (or its first present alias), checked against the shape config.json implies.

    Raises:
        CheckpointError: naming the tensor when it is missing or has another shape.
    """
    for key in (name, *aliases):
        if key in tensors:
            value = tensors[key]
            if tuple(value.shape) != tuple(shape):
                raise CheckpointError(
                    f"{source}: tensor {key} has shape {tuple(value.shape)}, but config.json "
                    f"implies {tuple(shape)}"
                )
            return value
    raise CheckpointError(f"{source}: tensor {name} is missing from the safetensors weights")
