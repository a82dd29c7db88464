"""Ground-truth rewards: the interface ``FrankaEnv`` calls, the twin scenes' rewards, and ``make_reward``.

A task with ``reward="ground_truth"`` gets its reward from ``make_reward``: the factory registered for
the task (``serl.envs.tasks.register_task(config, reward=...)``) or its twin scene's reward. Nothing here
imports MuJoCo: the scene geometry comes from ``robot_servers.twin.models``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Protocol

import numpy as np

from robot_servers.backends.base import RobotState
from robot_servers.control.pose import rotate
from robot_servers.twin import models as twin_models  # geometry only; does not import mujoco
from serl.envs.task_config import TaskConfig


def nearness(a, b, scale: float) -> float:
    """A shaping term: 1 where point ``a`` is at ``b``, falling linearly to 0 at ``scale`` m apart and beyond."""
    gap = float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))
    return 1.0 - min(gap / scale, 1.0)


class GroundTruthReward(Protocol):
    """Reward from the twin's ground truth: ``reset`` at episode start, then called every step."""

    def reset(self, scene: Mapping[str, np.ndarray], state: RobotState) -> None: ...

    def __call__(self, scene: Mapping[str, np.ndarray], state: RobotState) -> tuple[float, bool]:
        """(reward, success)."""


RewardFactory = Callable[[TaskConfig], GroundTruthReward]


@dataclasses.dataclass
class PickCubeReward:
    """Sparse: 1 once the cube is ``lift_height`` above where it started. Dense: reach + lift shaping.

    ``shaping`` adds ``shaping_discount * phi(s') - phi(s)`` for a potential phi (reach progress + lift
    progress, each worth 0.5), with phi = 0 once the cube is lifted (the episode ends there). With the agent's
    discount as ``shaping_discount`` the discounted return changes by -phi(s0) only (Ng et al., 1999), so the
    best policy stays the one that lifts the cube soonest, but every step towards the cube or upwards with it is
    rewarded at once.
    """

    lift_height: float = 0.1
    dense: bool = False
    shaping: bool = False
    shaping_discount: float = 1.0
    reach_scale: float = 0.25  # m: the reach potential grows linearly from this distance to contact
    initial_z: float = 0.0
    potential: float = 0.0

    def reset(self, scene: Mapping[str, np.ndarray], state: RobotState) -> None:
        self.initial_z = float(scene["cube"][2])
        self.potential = self.shaping_potential(scene, state)

    def shaping_potential(self, scene: Mapping[str, np.ndarray], state: RobotState) -> float:
        cube = np.asarray(scene["cube"][:3])
        reach = nearness(state.tcp_pose[:3], cube, self.reach_scale)
        lift = float(np.clip((cube[2] - self.initial_z) / self.lift_height, 0.0, 1.0))
        return 0.5 * reach + 0.5 * lift

    def __call__(self, scene: Mapping[str, np.ndarray], state: RobotState) -> tuple[float, bool]:
        reward, success = self._reward(scene, state)
        if self.shaping:
            potential = 0.0 if success else self.shaping_potential(scene, state)
            reward += self.shaping_discount * potential - self.potential
            self.potential = potential
        return reward, success

    def _reward(self, scene: Mapping[str, np.ndarray], state: RobotState) -> tuple[float, bool]:
        cube = np.asarray(scene["cube"][:3])
        lift = float(cube[2]) - self.initial_z
        success = lift >= self.lift_height
        if not self.dense:
            return float(success), success
        reach = np.exp(-20.0 * np.linalg.norm(state.tcp_pose[:3] - cube))
        return float(0.3 * reach + 0.7 * np.clip(lift / self.lift_height, 0.0, 1.0)), success


@dataclasses.dataclass
class PegInsertionReward:
    """Sparse: 1 when the peg's tip is ``depth`` inside the hole and centred within the clearance.
    Dense: shaping on the distance from the peg tip to that goal point."""

    depth: float = 0.02
    tolerance: float = twin_models.HOLE_CLEARANCE + 0.002
    dense: bool = False

    def reset(self, scene: Mapping[str, np.ndarray], state: RobotState) -> None:
        pass

    def __call__(self, scene: Mapping[str, np.ndarray], state: RobotState) -> tuple[float, bool]:
        tip = peg_tip(scene["peg"])
        hole = np.asarray(scene["hole"][:3])
        goal = hole + np.array([0.0, 0.0, twin_models.HOLE_DEPTH - self.depth])
        centred = np.linalg.norm(tip[:2] - hole[:2]) <= self.tolerance
        success = bool(centred and tip[2] <= goal[2])
        if not self.dense:
            return float(success), success
        return float(np.exp(-20.0 * np.linalg.norm(tip - goal))) if not success else 1.0, success


@dataclasses.dataclass
class RelocateReward:
    """Sparse: 1 when the cube rests on the table inside the goal region (placed, not held above it).

    ``shaping`` adds ``shaping_discount * phi(s') - phi(s)`` as ``PickCubeReward`` does, with phi = 0.5 * reach
    (hand to cube) + 0.5 * carry progress (1 - xy distance cube → goal / ``span``, floored at 0) and phi = 0 at
    success. Dense: the same phi, 1 at success.
    """

    goal_xy: tuple[float, float]
    radius: float = twin_models.REGION_RADIUS
    span: float = 0.2  # m, the distance between the regions: carry progress is 0 this far from the goal
    rest_tolerance: float = 0.004  # m the cube's centre may be above its resting height
    dense: bool = False
    shaping: bool = False
    shaping_discount: float = 1.0
    reach_scale: float = 0.25
    potential: float = 0.0

    def reset(self, scene: Mapping[str, np.ndarray], state: RobotState) -> None:
        self.potential = 0.0 if self.success(scene) else self.shaping_potential(scene, state)

    def success(self, scene: Mapping[str, np.ndarray]) -> bool:
        cube = np.asarray(scene["cube"][:3], dtype=np.float64)
        inside = float(np.linalg.norm(cube[:2] - np.asarray(self.goal_xy))) <= self.radius
        resting = abs(float(cube[2]) - (twin_models.TABLE_TOP + twin_models.CUBE_HALF)) <= self.rest_tolerance
        return bool(inside and resting)

    def shaping_potential(self, scene: Mapping[str, np.ndarray], state: RobotState) -> float:
        cube = np.asarray(scene["cube"][:3], dtype=np.float64)
        reach = nearness(state.tcp_pose[:3], cube, self.reach_scale)
        carry = nearness(cube[:2], self.goal_xy, self.span)
        return 0.5 * reach + 0.5 * carry

    def __call__(self, scene: Mapping[str, np.ndarray], state: RobotState) -> tuple[float, bool]:
        success = self.success(scene)
        reward = 1.0 if success else (self.shaping_potential(scene, state) if self.dense else 0.0)
        if self.shaping:
            potential = 0.0 if success else self.shaping_potential(scene, state)
            reward += self.shaping_discount * potential - self.potential
            self.potential = potential
        return reward, success


def relocate_reward(goal: str) -> RewardFactory:
    """Reward factory of a relocation task whose goal is region ``goal`` (``twin_models.RELOCATE_REGIONS``)."""
    regions = twin_models.RELOCATE_REGIONS
    if goal not in regions:
        raise ValueError(f"goal: unknown region {goal!r}; choose one of {sorted(regions)}")
    (ax, ay), (bx, by) = regions["A"], regions["B"]
    span = float(np.hypot(bx - ax, by - ay))

    def factory(task: TaskConfig) -> RelocateReward:
        return RelocateReward(goal_xy=tuple(regions[goal]), span=span, dense=task.dense_reward,
                              shaping=task.reward_shaping, shaping_discount=task.shaping_discount)

    return factory


def peg_tip(peg_pose: np.ndarray) -> np.ndarray:
    """Centre of the peg's lower end face in the base frame (the peg is symmetric end to end)."""
    peg_pose = np.asarray(peg_pose, dtype=np.float64)
    half_axis = rotate(peg_pose[3:7], np.array([0.0, 0.0, twin_models.PEG_HALF_LENGTH]))
    ends = peg_pose[:3] + np.stack([half_axis, -half_axis])
    return ends[np.argmin(ends[:, 2])]


SCENE_REWARDS: dict[str, Callable[[bool], GroundTruthReward]] = {
    "pick_cube": lambda dense: PickCubeReward(dense=dense),
    "peg_insertion": lambda dense: PegInsertionReward(dense=dense),
}
SHAPED_REWARDS: dict[str, Callable[[bool, float], GroundTruthReward]] = {
    "pick_cube": lambda dense, discount: PickCubeReward(dense=dense, shaping=True, shaping_discount=discount),
}


_TASK_REWARDS: dict[str, RewardFactory] = {}


def set_task_reward(task_name: str, factory: RewardFactory | None) -> None:
    """Build the ground-truth reward of the task named ``task_name`` with ``factory(task)``; None: its scene's."""
    if factory is None:
        _TASK_REWARDS.pop(task_name, None)
    else:
        _TASK_REWARDS[task_name] = factory


def make_reward(task: TaskConfig) -> GroundTruthReward | None:
    """The task's ground-truth reward, or None when its reward comes from a classifier or a person.

    ValueError when the task says ``reward="ground_truth"`` but neither a registered factory nor its
    scene provides one.
    """
    if task.reward != "ground_truth":
        return None
    factory = _TASK_REWARDS.get(task.name)
    if factory is not None:
        return factory(task)
    if task.scene not in SCENE_REWARDS:
        raise ValueError(f"TaskConfig.reward='ground_truth' but scene {task.scene!r} has no ground-truth reward "
                         "(set reward='classifier' or 'keyboard', or register the task with a reward)")
    if task.reward_shaping:
        if task.scene not in SHAPED_REWARDS:
            raise ValueError(f"TaskConfig.reward_shaping: scene {task.scene!r} has no shaped reward "
                             f"(shaped: {sorted(SHAPED_REWARDS)})")
        return SHAPED_REWARDS[task.scene](task.dense_reward, task.shaping_discount)
    return SCENE_REWARDS[task.scene](task.dense_reward)
