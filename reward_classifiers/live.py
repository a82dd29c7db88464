"""Live labelling during teleop: a key toggles "success" marking; every step's ``info["succeed"]`` follows it,
so an ``EpisodeRecorder`` stores per-step success flags (observation labels for ``frames_from_episodes``).

Terminals report key presses, not how long a key is held, so the mark key toggles: press it when the task
looks done, press it again if it stops looking done. Marking is off at each reset. ``end_key`` ends the episode.
"""

from __future__ import annotations

import os
from typing import Callable

import gymnasium as gym
import numpy as np

from robot_servers.clock import PeriodicClock
from serl.data.episodes import EpisodeRecorder, EpisodeWriter
from serl.envs.keyboard_reward import KeySource


class SuccessKeyLabels(gym.Wrapper):
    """Sets ``info["succeed"]`` from a toggle key (and the teleop device's buttons of the same name)."""

    def __init__(self, env: gym.Env, keys: KeySource, *, mark_key: str = "space", end_key: str | None = "enter"):
        super().__init__(env)
        self.keys = keys
        self.mark_key = mark_key
        self.end_key = end_key
        self.marking = False

    def reset(self, **kwargs):
        self.keys.drain()
        self.marking = False
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, "succeed": False}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        pressed = [getattr(event, "key", event) for event in self.keys.drain()]
        pressed += [k for k, v in info.get("teleop_buttons", {}).items() if v]
        self.marking ^= pressed.count(self.mark_key) % 2 == 1
        info = {**info, "env_succeed": bool(info.get("succeed", False)), "succeed": self.marking,
                "label_source": "key"}
        if self.end_key is not None and self.end_key in pressed:
            truncated = True
        return obs, reward, terminated, truncated, info


def record_labelled_episodes(
    env: gym.Env,
    keys: KeySource,
    out: str | os.PathLike,
    episodes: int,
    *,
    policy: Callable[[dict], np.ndarray] | None = None,
    mark_key: str = "space",
    end_key: str = "enter",
    period: float | None = None,
    seed: int = 0,
    task: str = "",
    report: Callable[[str], None] | None = None,
) -> dict:
    """Run ``episodes`` teleop episodes (the env should carry an ``InterventionWrapper``) and write them,
    with the key-marked success flags, to the HDF5 episode file ``out``. ``period`` paces the loop (s)."""
    labelled = SuccessKeyLabels(env, keys, mark_key=mark_key, end_key=end_key)
    zero = np.zeros(env.action_space.shape, env.action_space.dtype)
    summary = {"episodes": 0, "frames": 0, "positives": 0}
    with EpisodeWriter(out, config={"task": task, "source": "live-labels", "mark_key": mark_key}) as writer:
        for index in range(episodes):
            obs, _ = labelled.reset(seed=seed + index)
            recorder = EpisodeRecorder(task=task, source="teleop")
            recorder.start(obs)
            done = False
            clock = PeriodicClock(period) if period else None
            while not done:
                if clock:  # a person needs the real control rate, also on a lockstep twin
                    clock.wait()
                action = zero if policy is None else policy(obs)
                obs, reward, terminated, truncated, info = labelled.step(action)
                recorder.add(action, reward, obs, terminated, truncated, info)
                done = terminated or truncated
            episode = recorder.finish()
            writer.write(episode)
            summary["episodes"] += 1
            summary["frames"] += len(episode) + 1
            summary["positives"] += int(episode.succeed.sum())
            if report is not None:
                report(f"episode {index + 1}/{episodes}: {len(episode)} steps, {int(episode.succeed.sum())} marked success")
    return summary
