"""Task registry, the sim tasks on the twin, and their ground-truth rewards.

``PandaPickCube``: lift the cube 10 cm (cube placed at random by ``reset_scene``).
``PandaPegInsertion``: the peg starts in the hand; insert it into the hole (hole placed at random).
Each comes in a state variant (object position in the state) and a pixel variant (wrist and
front cameras, proprioception only). ``make_sim_env`` builds twin + ``LocalRobot`` + ``FrankaEnv``;
nothing here imports MuJoCo until an env is built.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import numpy as np

from robot_servers.backends.base import MAX_GRIPPER_WIDTH, ImpedanceParams, RobotState
from robot_servers.control.pose import rotate
from robot_servers.control.safety import SafetyBox
from robot_servers.twin import models as twin_models  # geometry only; does not import mujoco
from serl.envs.franka_env import GroundTruthReward
from serl.envs.task_config import CameraSpec, ResetHookSpec, TaskConfig

DOWN = (1.0, 0.0, 0.0, 0.0)  # gripper pointing at the table
SIM_CAMERAS = (CameraSpec("wrist"), CameraSpec("front"))

PEG_HALF_LENGTH = twin_models.PEG_HALF_LENGTH
HOLE_DEPTH = twin_models.HOLE_DEPTH
HOLE_CLEARANCE = twin_models.HOLE_CLEARANCE

RewardFactory = Callable[[TaskConfig], GroundTruthReward]


# ----------------------------------------------------------------------------- rewards


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
        reach = 1.0 - min(float(np.linalg.norm(np.asarray(state.tcp_pose[:3]) - cube)) / self.reach_scale, 1.0)
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
    tolerance: float = HOLE_CLEARANCE + 0.002
    dense: bool = False

    def reset(self, scene: Mapping[str, np.ndarray], state: RobotState) -> None:
        pass

    def __call__(self, scene: Mapping[str, np.ndarray], state: RobotState) -> tuple[float, bool]:
        tip = peg_tip(scene["peg"])
        hole = np.asarray(scene["hole"][:3])
        goal = hole + np.array([0.0, 0.0, HOLE_DEPTH - self.depth])
        centred = np.linalg.norm(tip[:2] - hole[:2]) <= self.tolerance
        success = bool(centred and tip[2] <= goal[2])
        if not self.dense:
            return float(success), success
        return float(np.exp(-20.0 * np.linalg.norm(tip - goal))) if not success else 1.0, success


def peg_tip(peg_pose: np.ndarray) -> np.ndarray:
    """Centre of the peg's lower end face in the base frame (the peg is symmetric end to end)."""
    peg_pose = np.asarray(peg_pose, dtype=np.float64)
    half_axis = rotate(peg_pose[3:7], np.array([0.0, 0.0, PEG_HALF_LENGTH]))
    ends = peg_pose[:3] + np.stack([half_axis, -half_axis])
    return ends[np.argmin(ends[:, 2])]


SCENE_REWARDS: dict[str, Callable[[bool], GroundTruthReward]] = {
    "pick_cube": lambda dense: PickCubeReward(dense=dense),
    "peg_insertion": lambda dense: PegInsertionReward(dense=dense),
}
SHAPED_REWARDS: dict[str, Callable[[bool, float], GroundTruthReward]] = {
    "pick_cube": lambda dense, discount: PickCubeReward(dense=dense, shaping=True, shaping_discount=discount),
}


# ----------------------------------------------------------------------------- registry

_TASKS: dict[str, tuple[TaskConfig, RewardFactory | None]] = {}


def register_task(config: TaskConfig, reward: RewardFactory | None = None, *, overwrite: bool = False) -> None:
    """Add a task by ``config.name``; ``reward(config)`` builds its ground-truth reward (default: the scene's)."""
    if config.name in _TASKS and not overwrite:
        raise ValueError(f"task {config.name!r} is already registered (pass overwrite=True to replace it)")
    _TASKS[config.name] = (config, reward)


def get_task(name: str, pixels: bool = False) -> TaskConfig:
    """A registered task; ``pixels=True`` gives its camera variant (``pixel_variant``)."""
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; registered: {list_tasks()}")
    task = _TASKS[name][0]
    return pixel_variant(task) if pixels and not task.cameras else task


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def make_reward(task: TaskConfig) -> GroundTruthReward | None:
    """The task's ground-truth reward, or None when reward comes from a classifier or a person."""
    if task.reward != "ground_truth":
        return None
    factory = _TASKS.get(task.name, (None, None))[1]
    if factory is not None:
        return factory(task)
    if task.scene not in SCENE_REWARDS:
        raise ValueError(f"TaskConfig.reward='ground_truth' but scene {task.scene!r} has no ground-truth reward")
    if task.reward_shaping:
        if task.scene not in SHAPED_REWARDS:
            raise ValueError(f"TaskConfig.reward_shaping: scene {task.scene!r} has no shaped reward "
                             f"(shaped: {sorted(SHAPED_REWARDS)})")
        return SHAPED_REWARDS[task.scene](task.dense_reward, task.shaping_discount)
    return SCENE_REWARDS[task.scene](task.dense_reward)


def default_reward(task: TaskConfig) -> GroundTruthReward | None:
    """``make_reward`` where the task has a ground-truth reward, else None (reward from a wrapper)."""
    if task.reward != "ground_truth":
        return None
    if _TASKS.get(task.name, (None, None))[1] is None and task.scene not in SCENE_REWARDS:
        return None
    return make_reward(task)


def pixel_variant(task: TaskConfig, cameras: tuple[CameraSpec, ...] = SIM_CAMERAS) -> TaskConfig:
    """The same task seen through cameras, without privileged object positions."""
    return dataclasses.replace(task, cameras=cameras, scene_objects=())


def with_overrides(task: TaskConfig, **overrides) -> TaskConfig:
    """``dataclasses.replace`` with a clear error for unknown fields."""
    known = {field.name for field in dataclasses.fields(TaskConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown TaskConfig fields {unknown}; known: {sorted(known)}")
    return dataclasses.replace(task, **overrides)


SIM_IMPEDANCE = ImpedanceParams()
SIM_PRECISION = ImpedanceParams(translational_clip=(0.02, 0.02, 0.02), rotational_clip=(0.1, 0.1, 0.1))

PANDA_PICK_CUBE = TaskConfig(
    name="PandaPickCube",
    reset_pose=(0.5, 0.0, 0.2, *DOWN),
    safety_box=SafetyBox(
        position_low=(0.3, -0.2, 0.005),
        position_high=(0.7, 0.2, 0.35),
        euler_low=(-0.15, -0.15, -np.pi / 4),
        euler_high=(0.15, 0.15, np.pi / 4),
        center_quat=DOWN,
    ),
    reset_xy_range=0.02,
    action_scale=(0.02, 0.1, 1.0),
    action_frame="base",
    gripper_mode="binary",
    max_episode_steps=100,
    control_hz=10.0,
    compliance=SIM_IMPEDANCE,
    precision=SIM_PRECISION,
    reward="ground_truth",
    reset_hooks=(
        ResetHookSpec("reset_robot"),
        ResetHookSpec("go_to_reset_pose", (("gripper", MAX_GRIPPER_WIDTH), ("duration", 1.5), ("settle", 0.8))),
        ResetHookSpec("scene_reset"),
    ),
    scene="pick_cube",
    scene_objects=("cube",),
)

PANDA_PEG_INSERTION = TaskConfig(
    name="PandaPegInsertion",
    reset_pose=(0.55, 0.0, 0.16, *DOWN),
    safety_box=SafetyBox(
        position_low=(0.4, -0.15, 0.05),
        position_high=(0.7, 0.15, 0.3),
        euler_low=(-0.1, -0.1, -np.pi / 4),
        euler_high=(0.1, 0.1, np.pi / 4),
        center_quat=DOWN,
    ),
    reset_xy_range=0.01,
    action_scale=(0.01, 0.05, 1.0),
    action_frame="base",
    gripper_mode="none",
    max_episode_steps=100,
    control_hz=10.0,
    compliance=SIM_IMPEDANCE,
    precision=SIM_PRECISION,
    reward="ground_truth",
    reset_hooks=(
        ResetHookSpec("reset_robot"),
        ResetHookSpec("scene_reset"),  # the twin puts the peg in the closed hand and moves the hole
        ResetHookSpec("go_to_reset_pose", (("duration", 1.5), ("settle", 0.8))),
    ),
    scene="peg_insertion",
    scene_objects=("hole",),
)

register_task(PANDA_PICK_CUBE)
register_task(PANDA_PEG_INSERTION)


# ----------------------------------------------------------------------------- building sim envs


def make_sim_env(
    task_name: str,
    pixels: bool = False,
    robot: str = "panda",
    seed: int | None = None,
    *,
    wrap: bool = False,
    render_mode: str | None = None,
    **overrides,
):
    """Twin (lockstep) + ``LocalRobot`` + ``FrankaEnv`` for a registered task.

    ``overrides`` replace ``TaskConfig`` fields; ``wrap=True`` adds ``default_wrappers``
    (relative frame, euler, flat state). ``seed`` seeds the twin and the env's first reset.
    """
    from robot_servers.backends.twin import TwinBackend, TwinConfig
    from serl.envs.franka_env import FrankaEnv
    from serl.envs.robot_client import LocalRobot

    task = with_overrides(get_task(task_name, pixels=pixels), robot=robot, **overrides)
    backend = TwinBackend(_twin_config(TwinConfig, task, seed))
    client = LocalRobot(backend, backend.cameras())
    env = FrankaEnv(client, task, reward_fn=make_reward(task), render_mode=render_mode)
    if seed is not None:
        env.np_random = np.random.default_rng(seed)
        env.action_space.seed(seed)
    if wrap:
        from serl.envs.wrappers import default_wrappers

        return default_wrappers(env)
    return env


def _twin_config(config_cls, task: TaskConfig, seed: int | None):
    sizes = {cam.size for cam in task.cameras}
    return config_cls(
        robot=task.robot,
        scene=task.scene,
        cameras=tuple(cam.name for cam in task.cameras),
        image_size=sizes.pop() if len(sizes) == 1 else (128, 128),
        lockstep=True,
        safety_box=task.safety_box,
        seed=0 if seed is None else int(seed),
        impedance=task.compliance,
    )
