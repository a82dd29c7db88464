"""Demo datasets: HDF5 episode files (serl.data.episodes) and SERL's pickle lists into replay buffers."""

from __future__ import annotations

import logging
import os
import pickle
from typing import Iterator, Mapping, Sequence

import numpy as np

from serl.data.episodes import Episode, read_episodes
from serl.data.replay import ReplayBuffer
from serl.data.transition import Transition, make_transition

log = logging.getLogger(__name__)


def flatten_observation(observation: Mapping, state_keys: Sequence[str]) -> dict:
    """{"state": {name: ...}, "images": {cam: ...}} -> {"state": concat in `state_keys` order, cam: frame}."""
    state = observation.get("state", {}) or {}
    missing = [k for k in state_keys if k not in state]
    if missing:
        raise ValueError(f"observations['state']: missing entries {missing}; has {sorted(state)}")
    flat = {}
    if state_keys:
        flat["state"] = np.concatenate(
            [np.asarray(state[k], np.float32).reshape(np.shape(state[k])[:-1] + (-1,)) for k in state_keys], axis=-1
        )
    flat.update(observation.get("images", {}) or {})
    return flat


def episode_transitions(episode: Episode, state_keys: Sequence[str],
                        grasp_penalty: float = 0.0) -> Iterator[Transition]:
    """Transitions of one episode in the buffer's insert format.

    The file's last step ends the episode: when the recording stopped it without a terminal state
    (a person ended it), it counts as truncated, so the critic still bootstraps from it.
    ``grasp_penalty`` > 0 adds ``grasp_penalty`` = -cost on the steps that changed the gripper (files
    without the ``gripper_changed`` field get none).
    """
    obs = flatten_observation(episode.observations, state_keys)
    steps = len(episode)
    changed = episode.gripper_changed if grasp_penalty > 0 else None
    for t in range(steps):
        yield make_transition(
            {k: v[t] for k, v in obs.items()}, episode.actions[t], episode.rewards[t],
            {k: v[t + 1] for k, v in obs.items()},
            terminated=bool(episode.terminated[t]), truncated=bool(episode.truncated[t]) or t == steps - 1,
            grasp_penalty=None if changed is None else -grasp_penalty * float(changed[t]),
        )


def load_episode_file(buffer: ReplayBuffer, path: str | os.PathLike, state_keys: Sequence[str], *,
                      only_successful: bool = False, grasp_penalty: float = 0.0) -> int:
    """Insert every complete episode of an HDF5 episode file into `buffer`; returns transitions added."""
    added = 0
    without_flag = 0
    for episode in read_episodes(path, only_successful=only_successful):
        without_flag += grasp_penalty > 0 and episode.gripper_changed is None
        for transition in episode_transitions(episode, state_keys, grasp_penalty):
            buffer.insert(transition)
            added += 1
    if without_flag:
        log.warning("%s: %d episodes have no gripper_changed field (recorded before it existed); their "
                    "transitions carry no grasp penalty", path, without_flag)
    return added


def _squeeze_stack(value):
    value = np.asarray(value)
    return value[0] if value.ndim >= 2 and value.shape[0] == 1 else value


def _pickled_observation(observation: Mapping, squeeze_frame_stack: bool) -> dict:
    return {k: _squeeze_stack(v) if squeeze_frame_stack else np.asarray(v) for k, v in observation.items()}


def load_serl_pickle(path: str | os.PathLike, buffer: ReplayBuffer | None = None, *,
                     squeeze_frame_stack: bool = True) -> list[Transition]:
    """Read a SERL demo file (a pickled list of transition dicts) from local disk.

    Unpickling can run arbitrary code: only use files you trust. Observation entries with a leading
    frame-stack axis of size 1 are squeezed. Transitions are inserted into `buffer` when given.
    """
    path = os.fspath(path)
    log.warning("loading %s with pickle: unpickling runs code from the file, only load files you trust", path)
    with open(path, "rb") as f:
        data = pickle.load(f)  # noqa: S301 - local file, warned above
    if not isinstance(data, list) or not all(isinstance(t, Mapping) for t in data):
        raise ValueError(f"{path}: expected a pickled list of transition dicts")
    out = []
    for i, t in enumerate(data):
        try:
            conv = make_transition(
                _pickled_observation(t["observations"], squeeze_frame_stack), t["actions"], float(t["rewards"]),
                _pickled_observation(t["next_observations"], squeeze_frame_stack),
                # SERL stores masks = 1 - terminated and dones = terminated or truncated
                terminated=float(t["masks"]) == 0.0, truncated=bool(t["dones"]),
                grasp_penalty=float(t["grasp_penalty"]) if "grasp_penalty" in t else None,
            )
        except KeyError as err:
            raise ValueError(f"{path}: transition {i} lacks {err}") from None
        out.append(conv)
        if buffer is not None:
            buffer.insert(conv)
    return out
