"""Two-arm tasks: a left and a right arm's ``TaskConfig`` on one clock, their twin world and the pair's reward.

``PandaHandover``: two Pandas facing each other across the table (bases 1 m apart along x, world frame midway). A
20 cm bar lies along x on the left arm's side of the table (y < 0); the left hand picks it up by its end and brings
it to the middle, the right hand takes the other end, the left lets go, and the right lifts the bar to a goal on the
other side (y > 0). Each arm acts in xyz plus a binary gripper (8 action values in all) and sees, in its own base
frame, its TCP position, velocity and gripper width and where the bar's centre is from its TCP (``bar_offset``).
Each arm's safety box keeps it on its side of the middle, so neither can finish alone. ``make_bimanual_sim_env``
builds the bimanual twin, both arms' guards (their hands kept ``clearance`` apart by one ``ArmPair``) and the
``DualFrankaEnv``.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping

import numpy as np

from robot_servers.control.pose import DOWN_QUAT, compose_pose, relative_pose
from robot_servers.control.safety import HandClearance, SafetyBox
from robot_servers.guard import ArmPair, GuardConfig
from robot_servers.limits import MAX_GRIPPER_WIDTH
from robot_servers.twin import models as twin_models  # geometry only; does not import mujoco
from serl.envs.dual_franka_env import ARMS, DualFrankaEnv
from serl.envs.franka_env import FrankaEnv
from serl.envs.rewards import nearness
from serl.envs.robot_client import LocalRobot
from serl.envs.task_config import CameraSpec, ResetHookSpec, TaskConfig
from serl.envs.tasks import SIM_PRECISION, pixel_variant, twin_options, with_overrides


@dataclasses.dataclass(frozen=True)
class BimanualTask:
    """Two arms' tasks on one clock (each ``TaskConfig`` in its arm's own base frame) and their twin world."""

    name: str
    left: TaskConfig
    right: TaskConfig
    scene: str = "empty"
    layout: str = "facing"
    separation: float = twin_models.BIMANUAL_SEPARATION
    clearance: float = HandClearance().clearance  # m between the hands (``HandClearance``)
    reward_shaping: bool = False
    shaping_discount: float = 1.0

    def __post_init__(self):
        if self.left.control_hz != self.right.control_hz:
            raise ValueError(f"BimanualTask {self.name}: the arms share one clock, got {self.left.control_hz} Hz "
                             f"(left) and {self.right.control_hz} Hz (right)")
        twin_models.bimanual_mounts(self.layout, self.separation)  # a clear error for a bad layout
        HandClearance(self.clearance)

    @property
    def control_hz(self) -> float:
        return self.left.control_hz

    @property
    def max_episode_steps(self) -> int:
        return max(self.left.max_episode_steps, self.right.max_episode_steps)

    @property
    def cameras(self) -> tuple:
        return self.left.cameras + self.right.cameras

    @property
    def safety_box(self) -> None:
        """None: each arm has its own (``left.safety_box``, ``right.safety_box``)."""
        return None

    def bases(self) -> dict[str, np.ndarray]:
        """Each arm's base pose (xyz + quat xyzw) in the world frame of the twin layout."""
        mounts = twin_models.bimanual_mounts(self.layout, self.separation)
        return {arm: np.array([*mount.pos, *mount.quat_xyzw]) for arm, mount in zip(ARMS, mounts)}


_TASKS: dict[str, BimanualTask] = {}
_REWARDS: dict[str, Any] = {}


def register_bimanual_task(task: BimanualTask, reward=None, *, overwrite: bool = False) -> None:
    """Add a two-arm task; ``reward(task)`` builds its pair reward (``reward(env) -> (reward, success)``)."""
    if task.name in _TASKS and not overwrite:
        raise ValueError(f"task {task.name!r} is already registered (pass overwrite=True to replace it)")
    _TASKS[task.name] = task
    _REWARDS[task.name] = reward


def is_bimanual(name: str) -> bool:
    return name in _TASKS


def get_bimanual_task(name: str, pixels: bool = False) -> BimanualTask:
    """A registered two-arm task; ``pixels=True`` gives its camera variant (``pixel_pair``)."""
    if name not in _TASKS:
        close = difflib.get_close_matches(name, sorted(_TASKS), n=1)
        raise ValueError(f"unknown two-arm task {name!r}{f' (did you mean {close[0]}?)' if close else ''}; "
                         f"registered: {', '.join(sorted(_TASKS))}")
    task = _TASKS[name]
    return pixel_pair(task) if pixels and not task.cameras else task


def pixel_pair(task: BimanualTask, size: tuple[int, int] = (128, 128)) -> BimanualTask:
    """The pair seen through cameras, without privileged object positions: each arm's wrist camera, and the
    scene's front camera once (with the left arm): ``left/wrist``, ``left/front``, ``right/wrist``."""
    size = tuple(size)
    left = pixel_variant(task.left, (CameraSpec("wrist", size), CameraSpec("front", size)))
    right = pixel_variant(task.right, (CameraSpec("wrist", size),))
    return dataclasses.replace(task, left=left, right=right)


def with_bimanual_overrides(task: BimanualTask, **overrides) -> BimanualTask:
    """Overrides of the pair's fields, or of ``TaskConfig`` fields (and ``camera_size``), which then apply to both
    arms (as ``with_overrides`` does for one)."""
    own = {field.name for field in dataclasses.fields(BimanualTask)} - {"name", "left", "right"}
    per_arm = {field.name for field in dataclasses.fields(TaskConfig)} - {"name"} | {"camera_size"}
    unknown = sorted(set(overrides) - own - per_arm)
    if unknown:
        raise ValueError(f"unknown fields {unknown} for two-arm task {task.name}; known: {sorted(own | per_arm)}")
    arm_overrides = {k: v for k, v in overrides.items() if k in per_arm and k not in own}
    left = with_overrides(task.left, **arm_overrides)
    right = with_overrides(task.right, **arm_overrides)
    return dataclasses.replace(task, left=left, right=right, **{k: v for k, v in overrides.items() if k in own})


def bimanual_reward(task: BimanualTask):
    """The registered pair reward of ``task``, built for it (``reward(env) -> (reward, success)``), or None."""
    build = _REWARDS.get(task.name)
    return None if build is None else build(task)


# ----------------------------------------------------------------------------- PandaHandover

# PandaHandover's geometry (reset poses, boxes) is laid out for facing arms at the default separation.
_BASES = {arm: np.array([*m.pos, *m.quat_xyzw]) for arm, m in zip(ARMS, twin_models.bimanual_mounts("facing"))}
HANDOVER_Y = 0.0  # world y of the handover: the middle between the bases
GRASP_OFFSET = 0.06  # m along the bar from its centre to each hand's grasp (the left at −x, the right at +x)


def to_arm(arm: str, world_xyz) -> np.ndarray:
    """A world point (facing layout) in ``arm``'s base frame."""
    return relative_pose(np.r_[world_xyz, 0.0, 0.0, 0.0, 1.0], _BASES[arm])[:3]


def _arm_task(arm: str, reset_world, y_world: tuple[float, float], hooks) -> TaskConfig:
    corners = np.array([to_arm(arm, (x, y, z)) for x in (-0.15, 0.15) for y in y_world for z in (0.005, 0.3)])
    low, high = corners.min(axis=0), corners.max(axis=0)
    return TaskConfig(
        name=f"PandaHandover/{arm}",
        reset_pose=(*to_arm(arm, reset_world), *DOWN_QUAT),
        safety_box=SafetyBox(position_low=tuple(low), position_high=tuple(high), euler_low=(-0.15, -0.15, -0.3),
                             euler_high=(0.15, 0.15, 0.3), center_quat=DOWN_QUAT),
        precision=SIM_PRECISION,
        rotation_actions=False,
        max_episode_steps=150,
        reset_hooks=hooks,
        scene="handover",
        state_keys=("tcp_position", "tcp_vel", "gripper_width"),
        scene_objects=("bar",),
        object_state="offset",
    )


_TO_RESET = ResetHookSpec("go_to_reset_pose", (("gripper", MAX_GRIPPER_WIDTH), ("duration", 1.0), ("settle", 0.5)))
PANDA_HANDOVER = BimanualTask(
    name="PandaHandover",
    # the left arm waits above the bar's side, the right arm on the other side, each nearer its own base
    left=_arm_task("left", (-0.05, -0.15, 0.15), (-0.3, 0.05), (ResetHookSpec("reset_robot"), _TO_RESET)),
    right=_arm_task("right", (0.08, 0.1, 0.2), (-0.05, 0.3),
                    (ResetHookSpec("reset_robot"), _TO_RESET, ResetHookSpec("scene_reset"))),
    scene="handover",
)


@dataclasses.dataclass
class HandoverReward:
    """Sparse: 1 when the bar's centre is within ``tolerance`` of the goal and the left hand is ``released`` away
    from it (so the right hand holds it up). ``shaping`` adds ``shaping_discount * phi(s') - phi(s)`` with phi the
    progress through the handover's stages (``shaping_potential``), 0 at success, as ``PickCubeReward`` does."""

    bases: Mapping[str, np.ndarray] = dataclasses.field(default_factory=lambda: dict(_BASES))  # world frame
    goal: tuple[float, float, float] = twin_models.HANDOVER_GOAL  # world
    tolerance: float = 0.04
    released: float = 0.08  # m from the left TCP to the bar's centre
    shaping: bool = False
    shaping_discount: float = 1.0
    potential: float = 0.0

    def reset(self, env: DualFrankaEnv) -> None:
        self.potential = self.shaping_potential(*self.measure(env))

    def measure(self, env: DualFrankaEnv) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The bar's centre and both TCPs, world frame."""
        scene = env.arms["left"].client.scene()
        bar = compose_pose(self.bases["left"], scene["bar"])[:3]
        hands = {arm: compose_pose(self.bases[arm], e.state.tcp_pose)[:3] for arm, e in env.arms.items()}
        return bar, hands

    def success(self, bar: np.ndarray, hands: Mapping[str, np.ndarray]) -> bool:
        return bool(np.linalg.norm(bar - self.goal) <= self.tolerance
                    and np.linalg.norm(hands["left"] - bar) >= self.released)

    def shaping_potential(self, bar: np.ndarray, hands: Mapping[str, np.ndarray]) -> float:
        """Progress in [0, 1]: each hand's reach to its grasp (the left's kept once the right holds its end, so
        letting go costs nothing) and the bar's way, half to the middle and half, in the right hand, on to the
        goal (never less than at the middle, so carrying it on gains at every step)."""
        left_grasp = bar - [GRASP_OFFSET, 0.0, 0.0]
        right_grasp = bar + [GRASP_OFFSET, 0.0, 0.0]
        handover = np.array([bar[0], HANDOVER_Y, twin_models.HANDOVER_GOAL[2]])
        reach_right = nearness(hands["right"], right_grasp, 0.25)
        reach_left = max(nearness(hands["left"], left_grasp, 0.25), reach_right)
        to_middle = nearness(bar, handover, 0.25)
        on_to_goal = nearness(bar, self.goal, float(np.linalg.norm(handover - self.goal)))
        carried = max(0.5 * to_middle, reach_right * (0.5 + 0.5 * on_to_goal))
        return 0.25 * (reach_left + reach_right) + 0.5 * carried

    def __call__(self, env: DualFrankaEnv) -> tuple[float, bool]:
        bar, hands = self.measure(env)
        success = self.success(bar, hands)
        reward = float(success)
        if self.shaping:
            potential = 0.0 if success else self.shaping_potential(bar, hands)
            reward += self.shaping_discount * potential - self.potential
            self.potential = potential
        return reward, success


register_bimanual_task(PANDA_HANDOVER, reward=lambda task: HandoverReward(
    bases=task.bases(), shaping=task.reward_shaping, shaping_discount=task.shaping_discount))


def make_bimanual_sim_env(task_name: str, seed: int | None = None, *, pixels: bool = False,
                          **overrides) -> DualFrankaEnv:
    """The bimanual twin (lockstep), each arm behind its own guard (its task's box, both hands kept apart by one
    ``ArmPair``), each arm's ``FrankaEnv``, and the ``DualFrankaEnv`` over them with the task's pair reward (none
    with ``reward="classifier"``: a ``ClassifierReward`` outside gives it). ``pixels``: ``pixel_pair``."""
    from robot_servers.backends.twin import TwinConfig, bimanual_twin  # MuJoCo: only when a twin is built

    task = with_bimanual_overrides(get_bimanual_task(task_name, pixels=pixels), **overrides)
    options = twin_options(task.left)
    options["cameras"] = tuple(dict.fromkeys(cam.name for arm in (task.left, task.right) for cam in arm.cameras))
    left, right = bimanual_twin(TwinConfig(lockstep=True, seed=0 if seed is None else int(seed), **options),
                                layout=task.layout, separation=task.separation)
    pair = ArmPair({"left": left.base_pose, "right": right.base_pose}, HandClearance(task.clearance))
    envs = {}
    for arm, backend in (("left", left), ("right", right)):
        arm_task = getattr(task, arm)
        available = backend.cameras()
        client = LocalRobot(backend, {cam.name: available[cam.name] for cam in arm_task.cameras}, GuardConfig(safety_box=arm_task.safety_box, paired=pair.arm(arm)))
        envs[arm] = FrankaEnv(client, arm_task, reward_fn=None)
    reward = bimanual_reward(task) if task.left.reward == "ground_truth" else None
    env = DualFrankaEnv(envs["left"], envs["right"], task=task, reward_fn=reward)
    if seed is not None:
        env.np_random = np.random.default_rng(seed)
        env.action_space.seed(seed)
    return env
