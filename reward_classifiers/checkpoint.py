"""Classifier checkpoints: a directory with ``classifier.json`` (spec, threshold, metrics) and
``params.msgpack`` (flax.serialization; no pickle). Loading checks the params against the spec."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import flax.serialization
import flax.traverse_util
import jax
import numpy as np

from reward_classifiers.model import ClassifierSpec, init_params

FORMAT = "serl-reward-classifier"
FORMAT_VERSION = 1
META_FILE = "classifier.json"
PARAMS_FILE = "params.msgpack"


class CheckpointError(ValueError):
    """A classifier checkpoint is missing, corrupt, or does not fit the model it describes."""


@dataclasses.dataclass(frozen=True)
class ClassifierCheckpoint:
    spec: ClassifierSpec
    params: Any
    threshold: float = 0.5
    metadata: dict = dataclasses.field(default_factory=dict)  # metrics, training config, data sources


def save_checkpoint(path: str | os.PathLike, checkpoint: ClassifierCheckpoint) -> Path:
    """Write the checkpoint directory (created if needed); params first, metadata last."""
    path = Path(path)
    if not 0.0 <= checkpoint.threshold <= 1.0:
        raise ValueError(f"threshold: must be in [0, 1], got {checkpoint.threshold}")
    path.mkdir(parents=True, exist_ok=True)
    state = jax.tree_util.tree_map(np.asarray, flax.serialization.to_state_dict(checkpoint.params))
    blob = flax.serialization.msgpack_serialize(state)
    _atomic_write(path / PARAMS_FILE, blob)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": checkpoint.spec.to_dict(),
        "threshold": float(checkpoint.threshold),
        "params_sha256": hashlib.sha256(blob).hexdigest(),
        "metadata": checkpoint.metadata,
    }
    _atomic_write(path / META_FILE, json.dumps(meta, indent=2, default=_json_default).encode())
    return path


def load_checkpoint(path: str | os.PathLike) -> ClassifierCheckpoint:
    """Read and verify a checkpoint; CheckpointError says what is wrong and where."""
    path = Path(path)
    if path.is_file() and path.name in (META_FILE, PARAMS_FILE):
        path = path.parent
    meta_path, params_path = path / META_FILE, path / PARAMS_FILE
    for file in (meta_path, params_path):
        if not file.is_file():
            raise CheckpointError(f"classifier checkpoint {path}: {file.name} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"classifier checkpoint {path}: {META_FILE} is not valid JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"classifier checkpoint {path}: {META_FILE} is not a reward-classifier file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"classifier checkpoint {path}: format_version {meta.get('format_version')} (this code reads {FORMAT_VERSION})"
        )
    try:
        spec = ClassifierSpec.from_dict(meta["spec"])
        threshold = float(meta["threshold"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"classifier checkpoint {path}: bad spec/threshold in {META_FILE}: {err}") from err
    if not 0.0 <= threshold <= 1.0:
        raise CheckpointError(f"classifier checkpoint {path}: threshold {threshold} outside [0, 1]")
    blob = params_path.read_bytes()
    expected_hash = meta.get("params_sha256")
    if expected_hash and hashlib.sha256(blob).hexdigest() != expected_hash:
        raise CheckpointError(f"classifier checkpoint {path}: {PARAMS_FILE} is corrupt (checksum mismatch)")
    try:
        state = flax.serialization.msgpack_restore(blob)
    except Exception as err:  # msgpack raises several unrelated types on garbage
        raise CheckpointError(f"classifier checkpoint {path}: {PARAMS_FILE} cannot be decoded ({err})") from err
    template = jax.eval_shape(lambda: init_params(spec))
    problem = _tree_mismatch(template, state)
    if problem:
        raise CheckpointError(f"classifier checkpoint {path}: params do not match the spec in {META_FILE}: {problem}")
    params = flax.serialization.from_state_dict(jax.tree_util.tree_map(lambda t: np.zeros(t.shape, t.dtype), template), state)
    return ClassifierCheckpoint(spec, params, threshold, meta.get("metadata", {}))


def _tree_mismatch(template: Any, given: Any) -> str | None:
    if not isinstance(given, dict):
        return f"expected a dict of arrays, got {type(given).__name__}"
    expected = flax.traverse_util.flatten_dict(flax.serialization.to_state_dict(template), sep="/")
    got = flax.traverse_util.flatten_dict(given, sep="/")
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or extra:
        return f"missing {missing[:4]}, unexpected {extra[:4]}"
    for key, ref in expected.items():
        if tuple(np.shape(got[key])) != tuple(ref.shape):
            return f"{key}: expected shape {tuple(ref.shape)}, file has {tuple(np.shape(got[key]))}"
    return None


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
