"""Labelled episodes from the MuJoCo twin without a person: the scripted expert drives, ground truth labels.

Successful episodes continue ``hold_steps`` past the first success (positives); failed ones are near misses
(for PandaPickCube the cube is lifted only part of the way, or never grasped) so the negatives include frames
that look almost like success.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from serl.data.episodes import EpisodeRecorder, EpisodeWriter, episode_count
from serl.devices.scripted import ExpertConfig, HandoverExpert, ScriptedExpert
from serl.envs.bimanual import bimanual_reward, get_bimanual_task, is_bimanual, make_bimanual_sim_env
from serl.envs.intervention import InterventionWrapper
from serl.envs.task_config import CameraSpec
from serl.envs.rewards import make_reward
from serl.envs.tasks import get_task, make_sim_env


def generate_twin_episodes(
    task: str,
    episodes: int,
    out: str | os.PathLike,
    *,
    seed: int = 0,
    image_size: tuple[int, int] = (128, 128),
    cameras: tuple[str, ...] = ("wrist", "front"),
    fail_fraction: float = 0.4,
    noise: float = 0.1,
    hold_steps: int = 8,
    max_steps: int | None = None,
    progress: Callable[[int, bool, int], None] | None = None,
) -> dict:
    """Record ``episodes`` scripted rollouts of a twin task to ``out`` (HDF5 episode file), labelled from ground truth.

    A two-arm task is seen through ``pixel_pair``'s cameras (``cameras`` is for one-arm tasks). ``max_steps``
    None: 60 steps for one arm, 110 for two (the handover expert needs about 70). Returns a summary (episodes,
    successes, frames, positives).
    """
    if episodes <= 0:
        raise ValueError(f"episodes: must be positive, got {episodes}")
    if not 0.0 <= fail_fraction <= 1.0:
        raise ValueError(f"fail_fraction: must be in [0, 1], got {fail_fraction}")
    size = tuple(int(v) for v in image_size)
    if is_bimanual(task):
        pair = get_bimanual_task(task)
        max_steps = 110 if max_steps is None else max_steps
        env = make_bimanual_sim_env(task, seed=seed, pixels=True, reward="classifier", camera_size=list(size),
                                    max_episode_steps=max_steps + 1)
        truth = bimanual_reward(pair)
        if truth is None:
            raise ValueError(f"task {task!r} has no ground-truth reward on the twin")
        cameras = tuple(env.observation_space["images"])
        judge = _PairTruth(truth, env)
    else:
        base_task = get_task(task)
        truth = make_reward(base_task)
        if truth is None:
            raise ValueError(f"task {task!r} has no ground-truth reward on the twin")
        max_steps = 60 if max_steps is None else max_steps
        env = make_sim_env(
            task, pixels=True, seed=seed, reward="classifier", max_episode_steps=max_steps + 1,
            cameras=tuple(CameraSpec(name, size) for name in cameras),
        )
        judge = _ArmTruth(truth, env)
    rng = np.random.default_rng(seed)
    config = {"task": task, "source": "twin-ground-truth", "image_size": list(size), "cameras": list(cameras),
              "seed": seed, "noise": noise, "fail_fraction": fail_fraction, "hold_steps": hold_steps}
    summary = {"episodes": 0, "successes": 0, "frames": 0, "positives": 0}
    start_index = episode_count(out) if os.path.exists(out) else 0
    try:
        with EpisodeWriter(out, config=config) as writer:
            for index in range(episodes):
                fail = bool(rng.random() < fail_fraction)
                expert_seed = int(rng.integers(1 << 31))
                if is_bimanual(task):
                    expert = HandoverExpert(env, ExpertConfig(noise=noise, seed=expert_seed))
                    # a near miss: the hands stop somewhere along the handover, before the bar reaches the goal
                    idle_from = int(rng.integers(10, 60)) if fail else None
                else:
                    expert = ScriptedExpert(env, _expert_config(env.task.scene, fail, noise, expert_seed, rng))
                    # a failed run that never grasps: the expert stops acting after a few steps
                    idle_from = int(rng.integers(3, 15)) if fail and rng.random() < 0.3 else None
                wrapped = InterventionWrapper(env, expert)
                obs, _ = wrapped.reset(seed=seed + start_index + index)
                judge.reset()
                recorder = EpisodeRecorder(task=task, source="scripted")
                recorder.start(obs)
                first_success = None
                action = np.zeros(wrapped.action_space.shape, wrapped.action_space.dtype)
                for step in range(max_steps):
                    wrapped.enabled = idle_from is None or step < idle_from
                    obs, _, _, _, info = wrapped.step(action)
                    succeed = judge.succeed()
                    info = {**info, "succeed": bool(succeed)}
                    if succeed and first_success is None:
                        first_success = step
                    done = first_success is not None and step >= first_success + hold_steps
                    recorder.add(action, float(succeed), obs, bool(done), step == max_steps - 1 and not done, info)
                    if done:
                        break
                episode = recorder.finish(seed=seed + start_index + index, near_miss=fail)
                writer.write(episode)
                summary["episodes"] += 1
                summary["successes"] += bool(episode.success)
                summary["frames"] += len(episode) + 1
                summary["positives"] += int(np.sum(episode.succeed))
                if progress is not None:
                    progress(index + 1, bool(episode.success), len(episode))
    finally:
        env.close()
    return summary


class _ArmTruth:
    """A one-arm task's ground truth (``serl.envs.rewards``) on its env's scene and state."""

    def __init__(self, reward, env):
        self.reward, self.env = reward, env

    def reset(self) -> None:
        self.reward.reset(self.env.client.scene(), self.env.state)

    def succeed(self) -> bool:
        return bool(self.reward(self.env.client.scene(), self.env.state)[1])


class _PairTruth:
    """A two-arm task's ground truth (its pair reward) on its ``DualFrankaEnv``."""

    def __init__(self, reward, env):
        self.reward, self.env = reward, env

    def reset(self) -> None:
        self.reward.reset(self.env)

    def succeed(self) -> bool:
        return bool(self.reward(self.env)[1])


def _expert_config(scene: str, fail: bool, noise: float, seed: int, rng: np.random.Generator):
    if scene == "pick_cube":
        # failures are lifted, but not far enough (the hardest negatives); successes hold at various heights
        lift = rng.uniform(0.01, 0.085) if fail else rng.uniform(0.12, 0.2)
        return ExpertConfig(noise=noise, seed=seed, lift_height=float(lift))
    if not fail:
        return ExpertConfig(noise=noise, seed=seed)
    return ExpertConfig(noise=max(noise, 0.8), seed=seed)
