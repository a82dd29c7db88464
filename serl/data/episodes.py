"""Episode files: one HDF5 file per recording session, one group per episode (DESIGN.md §5).

Layout (T = number of steps of the episode)::

    file attrs      schema_version=1, config (JSON string), created (ISO time)
    episode_000000/
        observations/state/<name>     (T+1, d) float32   proprio entries, final obs included
        observations/images/<camera>  (T+1, H, W, 3) uint8, one chunk per frame, lzf by default
        actions                       (T, A) float32     the executed action (the human's when intervened)
        rewards                       (T,) float32
        terminated, truncated         (T,) bool
        intervened, succeed           (T,) bool
        timestamps                    (T+1,) float64
        attrs: length=T, success, task, source, complete=True (set last)

Crash safety: the file is opened, one whole episode is written, ``complete`` is set and the file
is closed again, so between episodes nothing is open and a Ctrl-C or SIGKILL while a person is
recording cannot touch finished episodes. A group left without ``complete=True`` (killed inside
the few milliseconds of a write) is skipped by :func:`read_episodes` with a warning.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import time
import warnings
from typing import Any, Iterator, Mapping

import h5py
import numpy as np

SCHEMA_VERSION = 1
GROUP_PATTERN = re.compile(r"^episode_(\d{6,})$")
STEP_FIELDS = ("rewards", "terminated", "truncated", "intervened", "succeed")
_STEP_DTYPES = {
    "rewards": np.float32,
    "terminated": np.bool_,
    "truncated": np.bool_,
    "intervened": np.bool_,
    "succeed": np.bool_,
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
        fields: dict[str, np.ndarray] = {}
        for name in STEP_FIELDS:
            arr = np.asarray(getattr(self, name)).astype(_STEP_DTYPES[name])
            if arr.shape != (steps,):
                raise ValueError(f"{name}: expected shape ({steps},), got {arr.shape}")
            fields[name] = arr
        timestamps = np.asarray(self.timestamps, dtype=np.float64)
        if timestamps.shape != (steps + 1,):
            raise ValueError(f"timestamps: expected shape ({steps + 1},), got {timestamps.shape}")
        observations = _canonical_observations(self.observations, steps + 1)
        return Episode(observations, actions, timestamps=timestamps, attrs=dict(self.attrs), **fields)

    def transitions(self) -> dict[str, Any]:
        """Transition arrays (length T) for a replay buffer: obs, next_obs, actions, rewards, flags.

        ``masks`` is 1 - terminated (bootstrapping continues through truncation);
        ``dones`` is terminated | truncated.
        """
        obs = self.observations

        def sliced(sl: slice) -> dict:
            return {kind: {k: v[sl] for k, v in entries.items()} for kind, entries in obs.items()}

        return {
            "observations": sliced(slice(0, -1)),
            "next_observations": sliced(slice(1, None)),
            "actions": self.actions,
            "rewards": self.rewards,
            "masks": 1.0 - self.terminated.astype(np.float32),
            "dones": self.terminated | self.truncated,
            "intervened": self.intervened,
            "succeed": self.succeed,
        }


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
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{field}: invalid entry name {name!r}")


def _episode_names(handle: h5py.File) -> list[str]:
    return sorted(name for name in handle.keys() if GROUP_PATTERN.match(name))


def _check_schema(handle: h5py.File, path: str) -> None:
    version = handle.attrs.get("schema_version")
    if version is None:
        raise ValueError(f"{path}: not an episode file (no schema_version attribute)")
    if int(version) != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {int(version)} is not supported (expected {SCHEMA_VERSION})")


class EpisodeWriter:
    """Appends episodes to an HDF5 file, one complete group per :meth:`write`.

    The file is created (or appended to) and closed again after every episode, so an interrupt
    between episodes leaves it closed and intact. ``image_compression`` is "lzf", "gzip" or None.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        config: Mapping[str, Any] | None = None,
        *,
        image_compression: str | None = "lzf",
    ) -> None:
        if image_compression not in ("lzf", "gzip", None):
            raise ValueError(f"image_compression: expected 'lzf', 'gzip' or None, got {image_compression!r}")
        self.path = os.fspath(path)
        self.image_compression = image_compression
        self._config_json = json.dumps(dict(config or {}), sort_keys=True, default=_json_default)
        self._closed = False
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        self._group_config: str | None = None
        if os.path.exists(self.path):
            with h5py.File(self.path, "r") as handle:
                _check_schema(handle, self.path)
                names = _episode_names(handle)
                stored = handle.attrs.get("config", "{}")
            self._next_index = 1 + max((int(GROUP_PATTERN.match(n).group(1)) for n in names), default=-1)
            if config is not None and _normalise_json(stored) != self._config_json:
                warnings.warn(
                    f"{self.path}: appending with a config that differs from the file's; "
                    "it is stored on each new episode group as attr 'config'",
                    stacklevel=2,
                )
                self._group_config = self._config_json
        else:
            with h5py.File(self.path, "w") as handle:
                handle.attrs["schema_version"] = SCHEMA_VERSION
                handle.attrs["config"] = self._config_json
                handle.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
            self._next_index = 0

    def write(self, episode: Episode) -> str:
        """Write one episode as a new group, mark it complete, flush and close; return the group name."""
        if self._closed:
            raise ValueError("EpisodeWriter is closed")
        episode = episode.validate()
        name = f"episode_{self._next_index:06d}"
        with h5py.File(self.path, "a") as handle:
            group = handle.create_group(name)
            obs = group.create_group("observations")
            state = obs.create_group("state")
            for key, arr in episode.observations["state"].items():
                state.create_dataset(key, data=arr)
            images = obs.create_group("images")
            for key, arr in episode.observations["images"].items():
                images.create_dataset(
                    key, data=arr, chunks=(1, *arr.shape[1:]) if arr.shape[0] else None,
                    compression=self.image_compression if arr.shape[0] else None,
                )
            group.create_dataset("actions", data=episode.actions)
            for field in STEP_FIELDS:
                group.create_dataset(field, data=getattr(episode, field))
            group.create_dataset("timestamps", data=episode.timestamps)
            attrs = {k: v for k, v in episode.attrs.items() if k not in ("complete", "length", "name")}
            attrs.setdefault("success", episode.success)
            attrs.setdefault("task", "")
            attrs.setdefault("source", "")
            if self._group_config is not None:
                attrs.setdefault("config", self._group_config)
            for key, value in attrs.items():
                group.attrs[key] = _attr_value(key, value)
            group.attrs["length"] = len(episode)
            handle.flush()
            group.attrs["complete"] = True
            handle.flush()
        self._next_index += 1
        return name

    def close(self) -> None:
        """Nothing stays open between episodes; this only refuses further writes."""
        self._closed = True

    def __enter__(self) -> "EpisodeWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return str(value)


def _normalise_json(text: Any) -> str:
    try:
        return json.dumps(json.loads(text), sort_keys=True)
    except (TypeError, ValueError):
        return str(text)


def _attr_value(key: str, value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, str, np.integer, np.floating)):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=_json_default)
    if value is None:
        return ""
    raise ValueError(f"attrs[{key!r}]: unsupported type {type(value).__name__}")


class EpisodeRecorder:
    """Collects one episode step by step from env observations and ``info`` dicts.

    ``start(obs)`` after reset, ``add(action, reward, next_obs, terminated, truncated, info)``
    after each step, then ``finish()`` to get an :class:`Episode` (or ``discard()``).
    The stored action is ``info["executed_action"]`` when present (the human's on intervention).
    """

    def __init__(self, task: str = "", source: str = "", clock=time.time) -> None:
        self.task = task
        self.source = source
        self._clock = clock
        self._reset()

    def _reset(self) -> None:
        self._obs: list[Mapping] = []
        self._steps: dict[str, list] = {k: [] for k in ("actions", *STEP_FIELDS)}
        self._timestamps: list[float] = []

    @property
    def active(self) -> bool:
        return bool(self._obs)

    def __len__(self) -> int:
        return len(self._steps["actions"])

    def start(self, obs: Mapping, timestamp: float | None = None) -> None:
        """Begin a new episode with the reset observation (drops any unfinished one)."""
        self._reset()
        self._obs.append(_copy_obs(obs))
        self._timestamps.append(self._clock() if timestamp is None else float(timestamp))

    def add(
        self,
        action: Any,
        reward: float,
        next_obs: Mapping,
        terminated: bool,
        truncated: bool,
        info: Mapping | None = None,
    ) -> None:
        """Append one step."""
        if not self._obs:
            raise ValueError("EpisodeRecorder.add before start(obs)")
        info = info or {}
        executed = info.get("executed_action")
        self._steps["actions"].append(np.asarray(action if executed is None else executed, dtype=np.float32))
        self._steps["rewards"].append(float(reward))
        self._steps["terminated"].append(bool(terminated))
        self._steps["truncated"].append(bool(truncated))
        self._steps["intervened"].append(bool(info.get("intervened", False)))
        self._steps["succeed"].append(bool(info.get("succeed", False)))
        self._obs.append(_copy_obs(next_obs))
        stamp = info.get("timestamp")
        self._timestamps.append(self._clock() if stamp is None else float(stamp))

    def finish(self, success: bool | None = None, **attrs: Any) -> Episode:
        """Return the recorded episode (validated) and start empty again."""
        if not self._obs:
            raise ValueError("EpisodeRecorder.finish before start(obs)")
        first = self._obs[0]
        observations = {
            kind: {name: np.stack([o[kind][name] for o in self._obs]) for name in (first.get(kind) or {})}
            for kind in ("state", "images")
        }
        steps = self._steps
        action_dim = steps["actions"][0].shape if steps["actions"] else (0,)
        episode = Episode(
            observations=observations,
            actions=np.stack(steps["actions"]) if steps["actions"] else np.zeros((0, *action_dim), np.float32),
            rewards=np.asarray(steps["rewards"], np.float32),
            terminated=np.asarray(steps["terminated"], bool),
            truncated=np.asarray(steps["truncated"], bool),
            intervened=np.asarray(steps["intervened"], bool),
            succeed=np.asarray(steps["succeed"], bool),
            timestamps=np.asarray(self._timestamps, np.float64),
            attrs={"task": self.task, "source": self.source, **attrs},
        )
        if success is not None:
            episode.attrs["success"] = bool(success)
        else:
            episode.attrs["success"] = bool(np.any(episode.succeed))
        self._reset()
        return episode.validate()

    def discard(self) -> None:
        """Drop the episode in progress."""
        self._reset()


def _copy_obs(obs: Mapping) -> dict:
    if not isinstance(obs, Mapping):
        raise ValueError(f"observation: expected a dict with 'state'/'images', got {type(obs).__name__}")
    return {
        "state": {k: np.array(v, dtype=np.float32) for k, v in (obs.get("state") or {}).items()},
        "images": {k: np.array(v, dtype=np.uint8) for k, v in (obs.get("images") or {}).items()},
    }


def _read_group(group: h5py.Group) -> Episode:
    obs = group.get("observations")
    observations = {
        kind: {name: ds[()] for name, ds in obs[kind].items()} if obs is not None and kind in obs else {}
        for kind in ("state", "images")
    }
    attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in group.attrs.items()}
    attrs.pop("complete", None)
    return Episode(
        observations=observations,
        actions=group["actions"][()],
        timestamps=group["timestamps"][()],
        attrs=attrs,
        **{field: group[field][()] for field in STEP_FIELDS},
    )


def read_episodes(path: str | os.PathLike, *, only_successful: bool = False) -> Iterator[Episode]:
    """Yield the complete episodes of a file in order; skip (with a warning) incomplete groups."""
    path = os.fspath(path)
    with h5py.File(path, "r") as handle:
        _check_schema(handle, path)
        for name in _episode_names(handle):
            group = handle[name]
            if not bool(group.attrs.get("complete", False)):
                warnings.warn(f"{path}: skipping {name}, left incomplete (interrupted while writing)", stacklevel=2)
                continue
            try:
                episode = _read_group(group)
            except (KeyError, OSError) as err:
                warnings.warn(f"{path}: skipping {name}, unreadable: {err}", stacklevel=2)
                continue
            episode.attrs["name"] = name
            if only_successful and not episode.success:
                continue
            yield episode


def episode_count(path: str | os.PathLike, *, only_successful: bool = False) -> int:
    """Number of complete episodes in a file (without loading their arrays)."""
    path = os.fspath(path)
    with h5py.File(path, "r") as handle:
        _check_schema(handle, path)
        count = 0
        for name in _episode_names(handle):
            attrs = handle[name].attrs
            if not bool(attrs.get("complete", False)):
                continue
            if only_successful and not bool(attrs.get("success", False)):
                continue
            count += 1
        return count


def read_config(path: str | os.PathLike) -> dict:
    """The recording config stored in the file attrs."""
    path = os.fspath(path)
    with h5py.File(path, "r") as handle:
        _check_schema(handle, path)
        return json.loads(handle.attrs.get("config", "{}"))
