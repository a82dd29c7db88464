"""The episode schema: the :class:`Episode` dataclass, its dtypes and validation, and file-level checks."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Mapping

import h5py
import numpy as np

SCHEMA_VERSION = 1
GROUP_PATTERN = re.compile(r"^episode_(\d{6,})$")
STEP_FIELDS = ("rewards", "terminated", "truncated", "intervened", "succeed")
OPTIONAL_STEP_FIELDS = ("gripper_changed",)  # None on an Episode, absent in a file, when not recorded
STEP_DTYPES = {
    "rewards": np.float32,
    "terminated": np.bool_,
    "truncated": np.bool_,
    "intervened": np.bool_,
    "succeed": np.bool_,
    "gripper_changed": np.bool_,
}


@dataclasses.dataclass
class Episode:
    """One recorded episode; arrays have a leading time axis (T steps, T+1 observations)."""

    observations: dict
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    intervened: np.ndarray
    succeed: np.ndarray
    timestamps: np.ndarray
    attrs: dict = dataclasses.field(default_factory=dict)
    gripper_changed: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    @property
    def success(self) -> bool:
        """Episode-level success: the ``success`` attr, else any per-step ``succeed`` flag."""
        if "success" in self.attrs:
            return bool(self.attrs["success"])
        return bool(np.any(self.succeed))

    def validate(self) -> "Episode":
        """Return a copy with canonical dtypes/shapes; raise ValueError naming the bad field."""
        actions = np.asarray(self.actions, dtype=np.float32)
        if actions.ndim == 1:
            actions = actions[:, None]
        if actions.ndim != 2:
            raise ValueError(f"actions: expected shape (T, A), got {actions.shape}")
        steps = actions.shape[0]
        if not np.all(np.isfinite(actions)):
            raise ValueError("actions: contains NaN or inf")
        fields: dict[str, np.ndarray | None] = {name: None for name in OPTIONAL_STEP_FIELDS}
        for name in STEP_FIELDS + OPTIONAL_STEP_FIELDS:
            if getattr(self, name) is None and name in OPTIONAL_STEP_FIELDS:
                continue
            arr = np.asarray(getattr(self, name)).astype(STEP_DTYPES[name])
            if arr.shape != (steps,):
                raise ValueError(f"{name}: expected shape ({steps},), got {arr.shape}")
            fields[name] = arr
        timestamps = np.asarray(self.timestamps, dtype=np.float64)
        if timestamps.shape != (steps + 1,):
            raise ValueError(f"timestamps: expected shape ({steps + 1},), got {timestamps.shape}")
        observations = _canonical_observations(self.observations, steps + 1)
        attrs = {str(k): attr_value(str(k), v) for k, v in self.attrs.items()}
        return Episode(observations, actions, timestamps=timestamps, attrs=attrs, **fields)


def _canonical_observations(observations: Mapping | None, length: int) -> dict:
    observations = observations or {}
    unknown = set(observations) - {"state", "images"}
    if unknown:
        raise ValueError(f"observations: unknown keys {sorted(unknown)} (expected 'state', 'images')")
    state: dict[str, np.ndarray] = {}
    for name, value in (observations.get("state") or {}).items():
        _check_name(f"observations/state/{name}", name)
        arr = np.asarray(value, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[0] != length:
            raise ValueError(f"observations/state/{name}: expected shape ({length}, d), got {arr.shape}")
        state[name] = arr
    images: dict[str, np.ndarray] = {}
    for name, value in (observations.get("images") or {}).items():
        _check_name(f"observations/images/{name}", name)
        arr = np.asarray(value)
        if arr.dtype != np.uint8:
            raise ValueError(f"observations/images/{name}: expected uint8, got {arr.dtype}")
        if arr.ndim != 4 or arr.shape[0] != length or arr.shape[-1] != 3:
            raise ValueError(f"observations/images/{name}: expected shape ({length}, H, W, 3), got {arr.shape}")
        images[name] = arr
    return {"state": state, "images": images}


def _check_name(field: str, name: str) -> None:
    """A plain name, or one arm's entry ``<arm>/<name>`` (two arms' observations: a group per arm in the file)."""
    parts = name.split("/") if isinstance(name, str) else [None]
    if len(parts) > 2 or any(not part or part in (".", "..") for part in parts):
        raise ValueError(f"{field}: invalid entry name {name!r}")


def entries(group: h5py.Group) -> dict[str, np.ndarray]:
    """The datasets below an observations group, one arm's group level flattened into ``<arm>/<name>``."""
    out = {}
    for name, item in group.items():
        if isinstance(item, h5py.Group):
            out.update({f"{name}/{inner}": ds[()] for inner, ds in item.items()})
        else:
            out[name] = item[()]
    return out


def json_default(value: Any) -> Any:
    """``json.dumps`` fallback for numpy values and dataclasses (anything else becomes its str)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return str(value)


def attr_value(key: str, value: Any) -> Any:
    """``value`` as an HDF5 attribute: scalars as they are, containers as JSON, None as ""."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, str, np.integer, np.floating)):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=json_default)
    if value is None:
        return ""
    raise ValueError(f"attrs[{key!r}]: unsupported type {type(value).__name__}")


def episode_names(handle: h5py.File) -> list[str]:
    """The episode group names of an open file, in order."""
    return sorted(name for name in handle.keys() if GROUP_PATTERN.match(name))


def check_schema(handle: h5py.File, path: str) -> None:
    """Raise ValueError unless ``handle`` is an episode file of the supported schema version."""
    version = handle.attrs.get("schema_version")
    if version is None:
        raise ValueError(f"{path}: not an episode file (no schema_version attribute)")
    if int(version) != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {int(version)} is not supported (expected {SCHEMA_VERSION})")
