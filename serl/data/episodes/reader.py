"""Reading episode files. Reading never modifies a file: an append that a dead writer left
unfinished is read around (the state before it), and only a writer rolls it back."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from typing import Iterator

import h5py
import numpy as np

from serl.data.episodes.files import open_h5
from serl.data.episodes.journal import PreAppendView, journal_path, read_journal
from serl.data.episodes.schema import OPTIONAL_STEP_FIELDS, STEP_FIELDS, Episode, check_schema, entries, episode_names


@contextlib.contextmanager
def _open_for_read(path: str) -> Iterator[h5py.File]:
    """The file's last consistent state, read-only and schema-checked; a pending journal is laid over it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"episode file not found: {path}")
    pending = read_journal(path)
    if pending is None:
        with open_h5(path, "r") as handle:
            check_schema(handle, path)
            yield handle
        return
    warnings.warn(
        f"{path}: a write was interrupted and is not rolled back yet ({journal_path(path)}); reading the episodes "
        "from before it. Opening the file with an EpisodeWriter (or calling recover(path)) rolls it back.",
        stacklevel=4,
    )
    with PreAppendView(path, *pending) as view, h5py.File(view, "r") as handle:
        check_schema(handle, path)
        yield handle


def _read_group(group: h5py.Group) -> Episode:
    obs = group.get("observations")
    observations = {
        kind: entries(obs[kind]) if obs is not None and kind in obs else {}
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


def read_episodes(
    path: str | os.PathLike, *, only_successful: bool = False, include_discarded: bool = False
) -> Iterator[Episode]:
    """Yield the complete episodes of a file in order; skip (with a warning) incomplete groups.

    Episodes a recorder marked ``discarded`` are skipped unless ``include_discarded``.
    """
    path = os.fspath(path)
    with _open_for_read(path) as handle:
        for name in episode_names(handle):
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
    with _open_for_read(path) as handle:
        count = 0
        for name in episode_names(handle):
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
    with _open_for_read(path) as handle:
        return json.loads(handle.attrs.get("config", "{}"))
