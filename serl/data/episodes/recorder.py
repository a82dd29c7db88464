"""EpisodeRecorder: collects one episode step by step from env observations and ``info`` dicts."""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np

from serl.data.episodes.schema import OPTIONAL_STEP_FIELDS, STEP_FIELDS, Episode

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
