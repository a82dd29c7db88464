"""Reset hooks: what happens between episodes, listed by name in ``TaskConfig.reset_hooks``.

A hook is any callable ``hook(env, episode_index, rng)``; it runs inside ``FrankaEnv.reset``
before the first observation is read, in the order the task lists them. Register your own with
``register_hook(name, factory)``.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Callable, Protocol, TextIO

import numpy as np

from robot_servers.limits import MAX_GRIPPER_WIDTH
from robot_servers.control.pose import (
    normalize_quat,
    quat_conjugate,
    quat_multiply,
    quat_to_rotvec,
    rotvec_to_quat,
)
from serl.envs.task_config import ResetHookSpec, TaskConfig


class ResetHook(Protocol):
    def __call__(self, env, episode_index: int, rng: np.random.Generator) -> None: ...


def interpolate_pose(start: np.ndarray, goal: np.ndarray, fraction: float) -> np.ndarray:
    """Linear position and slerp orientation between two poses, ``fraction`` in [0, 1]."""
    start = np.asarray(start, dtype=np.float64)
    goal = np.asarray(goal, dtype=np.float64)
    relative = quat_to_rotvec(quat_multiply(quat_conjugate(start[3:]), goal[3:]))
    quat = quat_multiply(start[3:], rotvec_to_quat(fraction * relative))
    return np.concatenate([start[:3] + fraction * (goal[:3] - start[:3]), normalize_quat(quat)])


def randomized_reset_pose(task: TaskConfig, rng: np.random.Generator) -> np.ndarray:
    """The task's reset pose plus uniform xy noise (±reset_xy_range) and base-frame yaw noise."""
    pose = np.asarray(task.reset_pose, dtype=np.float64).copy()
    if task.reset_xy_range > 0:
        pose[:2] += rng.uniform(-task.reset_xy_range, task.reset_xy_range, size=2)
    if task.reset_yaw_range > 0:
        yaw = rng.uniform(-task.reset_yaw_range, task.reset_yaw_range)
        pose[3:] = quat_multiply(rotvec_to_quat([0.0, 0.0, yaw]), pose[3:])
    return np.concatenate([pose[:3], normalize_quat(pose[3:])])


def move_to_pose(env, goal: np.ndarray, *, duration: float | None = None, speed: float = 0.1,
                 settle: float = 0.0) -> None:
    """Interpolated targets from the measured pose to ``goal`` at control rate (over ``duration``
    seconds, or at ``speed`` m/s when not given), then ``settle`` seconds holding ``goal``."""
    start = env.read_state().tcp_pose
    goal = np.asarray(goal, dtype=np.float64)
    if duration is None:
        duration = float(np.linalg.norm(goal[:3] - start[:3])) / speed
    steps = max(1, int(round(duration * env.task.control_hz)))
    for i in range(1, steps + 1):
        env.client.set_target(interpolate_pose(start, goal, i / steps))
        env.wait_period()
    for _ in range(int(round(settle * env.task.control_hz))):
        env.wait_period()


@dataclasses.dataclass(frozen=True)
class GoToResetPose:
    """Move to the (randomised) reset pose at control rate under the task's ``precision``
    impedance, hold it for ``settle`` seconds, then switch to ``compliance``."""

    duration: float = 1.0  # s of interpolated targets
    settle: float = 0.5  # s holding the goal before the episode starts
    gripper: float | None = None  # width to command first (e.g. 0.08 to release an object)
    randomize: bool = True

    def __call__(self, env, episode_index: int, rng: np.random.Generator) -> None:
        task = env.task
        goal = randomized_reset_pose(task, rng) if self.randomize else np.asarray(task.reset_pose, float)
        env.client.set_impedance(task.precision)
        if self.gripper is not None:
            env.command_gripper(self.gripper)
        move_to_pose(env, goal, duration=self.duration, settle=self.settle)
        env.client.set_impedance(task.compliance)


@dataclasses.dataclass(frozen=True)
class JointReset:
    """Joint-space move home every ``period`` episodes (0: use ``TaskConfig.joint_reset_period``),
    starting with the first episode."""

    period: int = 0
    duration: float = 3.0

    def __call__(self, env, episode_index: int, rng: np.random.Generator) -> None:
        period = self.period or env.task.joint_reset_period
        if period > 0 and episode_index % period == 0:
            env.client.joint_reset(None, self.duration)


@dataclasses.dataclass(frozen=True)
class ResetRobot:
    """Twin only: the arm back at rest at home, hand open, so seeded episodes start identically.

    A client that cannot teleport the arm (a robot server) gets a joint reset and an open hand instead.
    """

    fallback_duration: float = 2.0

    def __call__(self, env, episode_index: int, rng: np.random.Generator) -> None:
        try:
            env.client.reset_robot()
        except NotImplementedError:
            env.command_gripper(MAX_GRIPPER_WIDTH)  # first: the hand opens during the joint move
            env.client.joint_reset(None, self.fallback_duration)


@dataclasses.dataclass(frozen=True)
class SceneReset:
    """Put the twin's task objects back at a random pose drawn from the env's seeded rng."""

    def __call__(self, env, episode_index: int, rng: np.random.Generator) -> None:
        env.client.reset_scene(int(rng.integers(0, 2**31 - 1)))


@dataclasses.dataclass(frozen=True)
class WaitForHuman:
    """Prompt on the terminal and wait for Enter (e.g. after a person has reset the scene)."""

    prompt: str = "Reset the scene, then press Enter to start the episode."
    input_stream: TextIO | None = None  # default: sys.stdin
    output_stream: TextIO | None = None  # default: sys.stdout

    def __call__(self, env, episode_index: int, rng: np.random.Generator) -> None:
        out = self.output_stream or sys.stdout
        out.write(f"[episode {episode_index}] {self.prompt}\n")
        out.flush()
        line = (self.input_stream or sys.stdin).readline()
        if line == "":
            raise RuntimeError("wait_for_human: standard input is closed; run interactively or drop this hook")


HOOKS: dict[str, Callable[..., ResetHook]] = {
    "go_to_reset_pose": GoToResetPose,
    "joint_reset": JointReset,
    "reset_robot": ResetRobot,
    "scene_reset": SceneReset,
    "wait_for_human": WaitForHuman,
}


def register_hook(name: str, factory: Callable[..., ResetHook]) -> None:
    """Make ``factory(**options)`` available to ``ResetHookSpec(name, options)``."""
    if name in HOOKS and HOOKS[name] is not factory:
        raise ValueError(f"reset hook {name!r} is already registered")
    HOOKS[name] = factory


def build_hook(spec: ResetHookSpec) -> ResetHook:
    if spec.name not in HOOKS:
        raise ValueError(f"ResetHookSpec.name: unknown reset hook {spec.name!r}; known: {sorted(HOOKS)}")
    try:
        return HOOKS[spec.name](**dict(spec.options))
    except TypeError as exc:
        raise ValueError(f"ResetHookSpec.options for {spec.name!r}: {exc}") from None


def build_hooks(task: TaskConfig) -> list[ResetHook]:
    """The task's hooks in order; a joint reset goes first when ``joint_reset_period`` asks for one."""
    hooks = [build_hook(spec) for spec in task.reset_hooks]
    if task.joint_reset_period > 0 and not any(spec.name == "joint_reset" for spec in task.reset_hooks):
        hooks.insert(0, JointReset())
    return hooks
