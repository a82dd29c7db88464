"""EpisodeWriter: appends whole episodes to an episode file, each append under the undo journal."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import signal
import threading
import warnings
from typing import Any, Callable, Mapping, TypeVar

import h5py

from serl.data.episodes.files import fsync_dir, open_h5
from serl.data.episodes.journal import (
    complement,
    journal_path,
    raw_ranges,
    recover,
    remove_stale_temporaries,
    roll_back,
    write_journal,
)
from serl.data.episodes.schema import (
    GROUP_PATTERN,
    OPTIONAL_STEP_FIELDS,
    SCHEMA_VERSION,
    STEP_FIELDS,
    Episode,
    attr_value,
    check_schema,
    episode_names,
    json_default,
)

Result = TypeVar("Result")


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


def _normalise_json(text: Any) -> str:
    try:
        return json.dumps(json.loads(text), sort_keys=True)
    except (TypeError, ValueError):
        return str(text)


class EpisodeWriter:
    """Appends episodes to an HDF5 file, one complete group per :meth:`write`.

    The file is created (or appended to) and closed again after every episode, so an interrupt
    between episodes leaves it closed and intact. Opening an existing file rolls back an append
    that a dead writer left unfinished. ``image_compression`` is "lzf", "gzip" or None.
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
        self._config_json = json.dumps(dict(config or {}), sort_keys=True, default=json_default)
        self._closed = False
        self._group_config: str | None = None
        self._raw_ranges: dict[str, list[tuple[int, int]]] = {}
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        remove_stale_temporaries(self.path)
        if os.path.exists(self.path):
            recover(self.path)
            with open_h5(self.path, "r") as handle:
                check_schema(handle, self.path)
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
            fsync_dir(self.path)
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
            self._raw_ranges[name] = raw_ranges(handle[name])
            return name

        return self._journaled(append)

    def discard(self, name: str) -> None:
        """Mark a written episode as discarded (``discarded=True``): readers skip it; its bytes stay."""

        def mark(handle: h5py.File, names: list[str]) -> None:
            if name not in names:
                raise ValueError(f"discard: no episode {name!r} in {self.path}")
            handle[name].attrs["discarded"] = True

        self._journaled(mark)

    def _journaled(self, change: Callable[[h5py.File, list[str]], Result]) -> Result:
        """Run ``change(handle, episode_names)`` on the file opened for append, under the undo journal."""
        if self._closed:
            raise ValueError("EpisodeWriter is closed")
        with _deferred_signals():
            recover(self.path)
            with open_h5(self.path, "r") as handle:
                names = episode_names(handle)
                for existing in names:
                    if existing not in self._raw_ranges:
                        self._raw_ranges[existing] = raw_ranges(handle[existing])
            old_size = os.path.getsize(self.path)
            raw = [r for existing in names for r in self._raw_ranges[existing]]
            journal_fd = write_journal(self.path, old_size, complement(raw, old_size))
            known = set(self._raw_ranges)
            try:
                with open_h5(self.path, "a") as handle:
                    result = change(handle, names)
                with open(self.path, "rb+") as synced:
                    os.fsync(synced.fileno())
            except BaseException:
                for added in set(self._raw_ranges) - known:
                    self._raw_ranges.pop(added, None)
                roll_back(self.path, journal_fd)
                raise
            else:
                os.unlink(journal_path(self.path))
                fsync_dir(self.path)
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
            group.attrs[key] = attr_value(key, value)
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
