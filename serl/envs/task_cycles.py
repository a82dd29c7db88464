"""Task cycles: tasks that reset each other on one robot (SERL's forward–backward training).

An actor runs the tasks of a cycle in turn, each with its own policy, learner, buffers, demos and reward, and
the scene is never put back between episodes: when a task fails, the next one starts from wherever the scene
is. Only when no task can go on from it (the cycle's ``stuck`` check, or ``fallback_after_failures`` failed
episodes in a row) do the ``fallback_hooks`` put the scene back, and every such fallback is counted.

``PandaRelocateFwBw``: the twin's relocation pair, ``PandaRelocateFw`` (the cube from region A to B) and
``PandaRelocateBw`` (back); its fallback is the twin's scene reset, which puts the cube in A.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Callable

import numpy as np

from robot_servers.twin import models as twin_models  # geometry only; does not import mujoco
from serl.envs.franka_env import FrankaEnv
from serl.envs.task_config import ResetHookSpec

StuckCheck = Callable[[FrankaEnv], str]
"""Why no task of the cycle can go on from the scene ("" when one can)."""


@dataclasses.dataclass(frozen=True)
class TaskCycle:
    """Registered tasks an actor alternates on one robot without scene resets."""

    name: str
    tasks: tuple[str, ...]
    """In the order they run: each one's goal is where the next one starts."""
    fallback_hooks: tuple[ResetHookSpec, ...] = (ResetHookSpec("wait_for_human"),)
    """What puts the scene back when no task can go on (twin: ``scene_reset``; real arm: a person)."""
    fallback_after_failures: int = 6
    """Failed episodes in a row (of any task) after which the scene counts as stuck."""
    stuck: StuckCheck | None = None

    def __post_init__(self):
        if len(self.tasks) < 2 or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"TaskCycle {self.name}: needs at least two different tasks, got {self.tasks}")
        if self.fallback_after_failures < 1:
            raise ValueError(f"TaskCycle {self.name}: fallback_after_failures must be >= 1")


_CYCLES: dict[str, TaskCycle] = {}


def register_cycle(cycle: TaskCycle, *, overwrite: bool = False) -> None:
    if cycle.name in _CYCLES and not overwrite:
        raise ValueError(f"task cycle {cycle.name!r} is already registered (pass overwrite=True to replace it)")
    _CYCLES[cycle.name] = cycle


def get_cycle(name: str) -> TaskCycle:
    if name not in _CYCLES:
        close = difflib.get_close_matches(name, list(_CYCLES), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"unknown task cycle {name!r}{hint}; registered: {', '.join(sorted(_CYCLES))}")
    return _CYCLES[name]


def is_cycle(name: str) -> bool:
    return name in _CYCLES


def objects_out_of_reach(env: FrankaEnv) -> str:
    """Twin: a scene object off the table or outside the safety box's xy range, where no task can reach it."""
    box = env.task.safety_box
    for name, pose in env.client.scene().items():
        xy, z = np.asarray(pose[:2]), float(pose[2])
        if z < twin_models.TABLE_TOP - 0.01:
            return f"the {name} fell off the table (z = {z:.3f} m)"
        if np.any(xy < np.asarray(box.position_low[:2])) or np.any(xy > np.asarray(box.position_high[:2])):
            return f"the {name} is out of reach at x, y = {xy[0]:.3f}, {xy[1]:.3f} m"
    return ""


register_cycle(TaskCycle(
    name="PandaRelocateFwBw",
    tasks=("PandaRelocateFw", "PandaRelocateBw"),
    fallback_hooks=(ResetHookSpec("scene_reset"),),
    stuck=objects_out_of_reach,
))
