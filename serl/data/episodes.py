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
        gripper_changed               (T,) bool          optional: the step changed the gripper (open<->close)
        timestamps                    (T+1,) float64
        attrs: length=T, success, task, source, complete=True (set last)

Crash safety: the file is opened, one whole episode is written, ``complete`` is set and the file
is closed again, so between episodes nothing is open. Appending to an HDF5 file rewrites a few
metadata blocks in place (B-tree nodes, heaps, superblock), so a SIGKILL or power loss inside a
write could leave the file unreadable. Each append therefore first saves every byte of the old
file that is not raw dataset data (a few KB of metadata) to an undo journal ``<file>.journal``;
the next writer or reader that finds a journal whose writer is gone (its ``flock`` is free) puts
those bytes back and truncates the file to its old size, as SQLite does with its rollback
journal. Ctrl-C/SIGTERM arriving during a write are deferred until the episode is on disk.
A group without ``complete=True`` is skipped by :func:`read_episodes` with a warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import re
import secrets
import signal
import struct
import tempfile
import threading
import time
import warnings
import zlib
from typing import Any, Iterator, Mapping

import h5py
import numpy as np

SCHEMA_VERSION = 1
GROUP_PATTERN = re.compile(r"^episode_(\d{6,})$")
STEP_FIELDS = ("rewards", "terminated", "truncated", "intervened", "succeed")
OPTIONAL_STEP_FIELDS = ("gripper_changed",)  # None on an Episode, absent in a file, when not recorded
_STEP_DTYPES = {
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
            arr = np.asarray(getattr(self, name)).astype(_STEP_DTYPES[name])
            if arr.shape != (steps,):
                raise ValueError(f"{name}: expected shape ({steps},), got {arr.shape}")
            fields[name] = arr
        timestamps = np.asarray(self.timestamps, dtype=np.float64)
        if timestamps.shape != (steps + 1,):
            raise ValueError(f"timestamps: expected shape ({steps + 1},), got {timestamps.shape}")
        observations = _canonical_observations(self.observations, steps + 1)
        attrs = {str(k): _attr_value(str(k), v) for k, v in self.attrs.items()}
        return Episode(observations, actions, timestamps=timestamps, attrs=attrs, **fields)

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


_JOURNAL_MAGIC = b"SERLJNL1"
_JOURNAL_END = b"JNLEND01"


def journal_path(path: str | os.PathLike) -> str:
    """Where the undo journal of an episode file lives while an append is in progress."""
    return os.fspath(path) + ".journal"


def _raw_ranges(group: h5py.Group) -> list[tuple[int, int]]:
    """(offset, size) of the raw data of every dataset below ``group``; HDF5 never rewrites these on append."""
    ranges: list[tuple[int, int]] = []

    def visit(_name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        dsid = obj.id
        if obj.chunks is not None:
            if hasattr(dsid, "chunk_iter"):  # HDF5 >= 1.14: one call for all chunks
                dsid.chunk_iter(lambda info: ranges.append((int(info.byte_offset), int(info.size))))
            else:
                for index in range(dsid.get_num_chunks()):
                    info = dsid.get_chunk_info(index)
                    ranges.append((int(info.byte_offset), int(info.size)))
        else:
            offset = dsid.get_offset()
            if offset is not None:
                ranges.append((int(offset), int(dsid.get_storage_size())))

    group.visititems(visit)
    return ranges


def _complement(ranges: list[tuple[int, int]], end: int) -> list[tuple[int, int]]:
    """Byte ranges of [0, end) not covered by ``ranges``."""
    gaps, cursor = [], 0
    for offset, size in sorted(ranges):
        if offset > cursor:
            gaps.append((cursor, min(offset, end) - cursor))
        cursor = max(cursor, offset + size)
        if cursor >= end:
            break
    if cursor < end:
        gaps.append((cursor, end - cursor))
    return [(o, n) for o, n in gaps if n > 0]


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_journal(path: str, old_size: int, segments: list[tuple[int, int]]) -> int:
    """Save the given byte ranges of ``path`` to its journal; return the locked journal fd."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".journal-tmp", dir=directory)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        crc = 0
        with open(path, "rb") as source:
            chunks = [_JOURNAL_MAGIC, struct.pack("<QQ", old_size, len(segments))]
            for offset, size in segments:
                source.seek(offset)
                data = source.read(size)
                if len(data) != size:
                    raise OSError(f"{path}: short read while journaling")
                chunks.append(struct.pack("<QQ", offset, size))
                chunks.append(data)
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
            os.write(fd, chunk)
        os.write(fd, _JOURNAL_END + struct.pack("<I", crc))
        os.fsync(fd)
        os.rename(tmp, journal_path(path))
        _fsync_dir(path)
        return fd
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _parse_journal(blob: bytes, where: str) -> tuple[int, list[tuple[int, bytes]]]:
    if not blob.startswith(_JOURNAL_MAGIC) or blob[-12:-4] != _JOURNAL_END:
        raise ValueError(f"{where}: not a complete episode journal")
    (crc,) = struct.unpack("<I", blob[-4:])
    body = blob[:-12]
    if zlib.crc32(body) != crc:
        raise ValueError(f"{where}: journal checksum mismatch")
    old_size, count = struct.unpack_from("<QQ", body, len(_JOURNAL_MAGIC))
    cursor = len(_JOURNAL_MAGIC) + 16
    segments = []
    for _ in range(count):
        offset, size = struct.unpack_from("<QQ", body, cursor)
        cursor += 16
        segments.append((offset, body[cursor : cursor + size]))
        cursor += size
    return old_size, segments


def _remove_stale_temporaries(path: str) -> None:
    """Delete journal/creation temporaries left by writers that died before renaming them."""
    pattern = os.path.basename(path) + "."
    directory = os.path.dirname(os.path.abspath(path))
    for entry in os.listdir(directory):
        if not (entry.startswith(pattern) and entry.endswith((".journal-tmp", ".tmp"))):
            continue
        full = os.path.join(directory, entry)
        if entry.endswith(".tmp"):
            # a file being created is renamed within milliseconds; older ones are leftovers
            with contextlib.suppress(FileNotFoundError):
                if time.time() - os.path.getmtime(full) > 60:
                    os.unlink(full)
            continue
        try:
            fd = os.open(full, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live writer owns it
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(full)
        finally:
            os.close(fd)


def _roll_back(path: str, journal_fd: int) -> None:
    """Put the journaled bytes back and cut the file to its old size (caller holds the journal lock)."""
    with os.fdopen(os.dup(journal_fd), "rb") as handle:
        handle.seek(0)
        old_size, segments = _parse_journal(handle.read(), journal_path(path))
    with open(path, "r+b") as target:
        for offset, data in segments:
            target.seek(offset)
            target.write(data)
        target.truncate(old_size)
        target.flush()
        os.fsync(target.fileno())
    os.unlink(journal_path(path))
    _fsync_dir(path)


def recover(path: str | os.PathLike) -> bool:
    """Roll back an append that was interrupted (its writer died); return True if it did.

    Waits while a live writer holds the journal. Needs write access to the file.
    """
    path = os.fspath(path)
    jpath = journal_path(path)
    try:
        fd = os.open(jpath, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks while a live writer is mid-append
        try:
            still_there = os.stat(jpath).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            still_there = False
        if not still_there:
            return False  # the writer finished and removed it
        _roll_back(path, fd)
    finally:
        os.close(fd)
    warnings.warn(f"{path}: rolled back an episode write that was interrupted", stacklevel=2)
    return True


@contextlib.contextmanager
def _deferred_signals():
    """Hold SIGINT/SIGTERM until the block ends, so Ctrl-C never lands inside an HDF5 write."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[tuple[int, Any]] = []
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.getsignal(sig)
        signal.signal(sig, lambda signum, frame: pending.append((signum, frame)))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum, frame in pending:
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


def _open_h5(path: str, mode: str, attempts: int = 50) -> h5py.File:
    """Open, retrying briefly while another process (a viewer) holds the HDF5 file lock."""
    for attempt in range(attempts):
        try:
            return h5py.File(path, mode)
        except (OSError, BlockingIOError) as err:
            if "lock" not in str(err).lower() or attempt == attempts - 1:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")


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
        self._group_config: str | None = None
        self._raw_ranges: dict[str, list[tuple[int, int]]] = {}
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        _remove_stale_temporaries(self.path)
        if os.path.exists(self.path):
            recover(self.path)
            with _open_h5(self.path, "r") as handle:
                _check_schema(handle, self.path)
                stored = handle.attrs.get("config", "{}")
            if config is not None and _normalise_json(stored) != self._config_json:
                warnings.warn(
                    f"{self.path}: appending with a config that differs from the file's; "
                    "it is stored on each new episode group as attr 'config'",
                    stacklevel=2,
                )
                self._group_config = self._config_json
        else:
            self._create()

    def _create(self) -> None:
        # Built under a temporary name and renamed, so a crash never leaves a half-made file.
        directory = os.path.dirname(os.path.abspath(self.path))
        tmp = os.path.join(directory, f"{os.path.basename(self.path)}.{secrets.token_hex(4)}.tmp")
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # umask applies, unlike mkstemp
        try:
            with h5py.File(tmp, "w") as handle:
                handle.attrs["schema_version"] = SCHEMA_VERSION
                handle.attrs["config"] = self._config_json
                handle.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
            os.rename(tmp, self.path)
            _fsync_dir(self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def write(self, episode: Episode) -> str:
        """Write one episode as a new group, mark it complete, flush and close; return the group name."""
        episode = episode.validate()

        def append(handle: h5py.File, names: list[str]) -> str:
            next_index = 1 + max((int(GROUP_PATTERN.match(n).group(1)) for n in names), default=-1)
            name = f"episode_{next_index:06d}"
            self._write_group(handle, name, episode)
            self._raw_ranges[name] = _raw_ranges(handle[name])
            return name

        return self._journaled(append)

    def discard(self, name: str) -> None:
        """Mark a written episode as discarded (``discarded=True``): readers skip it; its bytes stay."""

        def mark(handle: h5py.File, names: list[str]) -> None:
            if name not in names:
                raise ValueError(f"discard: no episode {name!r} in {self.path}")
            handle[name].attrs["discarded"] = True

        self._journaled(mark)

    def _journaled(self, change):
        """Run ``change(handle, episode_names)`` on the file opened for append, under the undo journal."""
        if self._closed:
            raise ValueError("EpisodeWriter is closed")
        with _deferred_signals():
            recover(self.path)
            with _open_h5(self.path, "r") as handle:
                names = _episode_names(handle)
                for existing in names:
                    if existing not in self._raw_ranges:
                        self._raw_ranges[existing] = _raw_ranges(handle[existing])
            old_size = os.path.getsize(self.path)
            raw = [r for existing in names for r in self._raw_ranges[existing]]
            journal_fd = _write_journal(self.path, old_size, _complement(raw, old_size))
            known = set(self._raw_ranges)
            try:
                with _open_h5(self.path, "a") as handle:
                    result = change(handle, names)
                with open(self.path, "rb+") as synced:
                    os.fsync(synced.fileno())
            except BaseException:
                for added in set(self._raw_ranges) - known:
                    self._raw_ranges.pop(added, None)
                _roll_back(self.path, journal_fd)
                raise
            else:
                os.unlink(journal_path(self.path))
                _fsync_dir(self.path)
            finally:
                os.close(journal_fd)
        return result

    def _write_group(self, handle: h5py.File, name: str, episode: Episode) -> None:
        group = handle.create_group(name)
        obs = group.create_group("observations")
        state = obs.create_group("state")
        for key, arr in episode.observations["state"].items():
            state.create_dataset(key, data=arr)
        images = obs.create_group("images")
        for key, arr in episode.observations["images"].items():
            images.create_dataset(key, data=arr, chunks=(1, *arr.shape[1:]), compression=self.image_compression)
        group.create_dataset("actions", data=episode.actions)
        for field in STEP_FIELDS + OPTIONAL_STEP_FIELDS:
            if getattr(episode, field) is not None:
                group.create_dataset(field, data=getattr(episode, field))
        group.create_dataset("timestamps", data=episode.timestamps)
        attrs = {k: v for k, v in episode.attrs.items() if k not in ("complete", "length", "name", "discarded")}
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
        self._steps: dict[str, list] = {k: [] for k in ("actions", *STEP_FIELDS, *OPTIONAL_STEP_FIELDS)}
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
        self._steps["gripper_changed"].append(bool(info.get("gripper_changed", False)))
        self._obs.append(_copy_obs(next_obs))
        stamp = info.get("timestamp")
        self._timestamps.append(self._clock() if stamp is None else float(stamp))

    def mark_success(self, reward: float = 1.0) -> None:
        """A person said the episode succeeded (key press): the last step gets the reward, succeed and terminated."""
        if not self._steps["actions"]:
            raise ValueError("mark_success: no step recorded yet")
        self._steps["rewards"][-1] = float(reward)
        self._steps["succeed"][-1] = True
        self._steps["terminated"][-1] = True
        self._steps["truncated"][-1] = False

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
            gripper_changed=np.asarray(steps["gripper_changed"], bool),
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
    attrs.setdefault("discarded", False)
    return Episode(
        observations=observations,
        actions=group["actions"][()],
        timestamps=group["timestamps"][()],
        attrs=attrs,
        **{field: group[field][()] for field in STEP_FIELDS},
        **{field: group[field][()] if field in group else None for field in OPTIONAL_STEP_FIELDS},
    )


def _recover_for_read(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"episode file not found: {path}")
    try:
        recover(path)
    except PermissionError as err:
        raise PermissionError(
            f"{path}: an interrupted write left {journal_path(path)}; rolling it back needs write access"
        ) from err


def read_episodes(
    path: str | os.PathLike, *, only_successful: bool = False, include_discarded: bool = False
) -> Iterator[Episode]:
    """Yield the complete episodes of a file in order; skip (with a warning) incomplete groups.

    Episodes a recorder marked ``discarded`` are skipped unless ``include_discarded``.
    """
    path = os.fspath(path)
    _recover_for_read(path)
    with _open_h5(path, "r") as handle:
        _check_schema(handle, path)
        for name in _episode_names(handle):
            group = handle[name]
            if not bool(group.attrs.get("complete", False)):
                warnings.warn(f"{path}: skipping {name}, left incomplete (interrupted while writing)", stacklevel=2)
                continue
            if bool(group.attrs.get("discarded", False)) and not include_discarded:
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
    _recover_for_read(path)
    with _open_h5(path, "r") as handle:
        _check_schema(handle, path)
        count = 0
        for name in _episode_names(handle):
            attrs = handle[name].attrs
            if not bool(attrs.get("complete", False)) or bool(attrs.get("discarded", False)):
                continue
            if only_successful and not bool(attrs.get("success", False)):
                continue
            count += 1
        return count


def read_config(path: str | os.PathLike) -> dict:
    """The recording config stored in the file attrs."""
    path = os.fspath(path)
    _recover_for_read(path)
    with _open_h5(path, "r") as handle:
        _check_schema(handle, path)
        return json.loads(handle.attrs.get("config", "{}"))
