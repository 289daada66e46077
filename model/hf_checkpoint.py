"""Reading Hugging Face-format checkpoint directories (config.json, safetensors, tokenizer).

Every failure is a :class:`CheckpointError` that names the directory and the missing file or
mismatched tensor, never a ``KeyError`` from deep inside a conversion.
"""

from __future__ import annotations

import json
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
        # The flax framework reads bfloat16 too; we keep float32 numpy arrays.
        with safe_open(str(path), framework="flax") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
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
