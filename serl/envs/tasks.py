"""Task registry and the sim tasks on the twin.

``PandaPickCube``: lift the cube 10 cm (cube placed at random by ``reset_scene``).
``PandaPegInsertion``: the peg starts in the hand; insert it into the hole (hole placed at random).
``PandaRelocateFw`` / ``PandaRelocateBw``: carry the cube from region A to region B / from B to A and put it
down there; an actor alternates them and the scene is never reset between episodes (``ReleaseAndRetreat``).
Each comes in a state variant (object position in the state) and a pixel variant (wrist and
front cameras, proprioception only). Their ground-truth rewards are in ``serl.envs.rewards``.
``make_sim_env`` builds twin + ``LocalRobot`` + ``FrankaEnv``; nothing here imports MuJoCo until an
env is built.
"""

from __future__ import annotations

import dataclasses
import difflib

import numpy as np

from robot_servers.backends.base import ImpedanceParams
from robot_servers.control.pose import DOWN_QUAT
from robot_servers.control.safety import SafetyBox
from robot_servers.guard import GuardConfig
from robot_servers.limits import MAX_GRIPPER_WIDTH
from robot_servers.twin import models as twin_models  # geometry only; does not import mujoco
from serl.envs.franka_env import FrankaEnv
from serl.envs.reset_hooks import GoToResetPose, move_to_pose, register_hook
from serl.envs.rewards import RewardFactory, make_reward, relocate_reward, set_task_reward
from serl.envs.robot_client import LocalRobot
from serl.envs.task_config import CameraSpec, ResetHookSpec, TaskConfig
from serl.envs.wrappers import default_wrappers

SIM_CAMERAS = (CameraSpec("wrist"), CameraSpec("front"))

_TASKS: dict[str, TaskConfig] = {}


def register_task(config: TaskConfig, reward: RewardFactory | None = None, *, overwrite: bool = False) -> None:
    """Add a task by ``config.name``; ``reward(config)`` builds its ground-truth reward (default: the scene's)."""
    if config.name in _TASKS and not overwrite:
        raise ValueError(f"task {config.name!r} is already registered (pass overwrite=True to replace it)")
    _TASKS[config.name] = config
    set_task_reward(config.name, reward)


def get_task(name: str, pixels: bool = False) -> TaskConfig:
    """A registered task; ``pixels=True`` gives its camera variant (``pixel_variant``)."""
    if name not in _TASKS:
        close = difflib.get_close_matches(name, list_tasks(), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"unknown task {name!r}{hint}; registered: {', '.join(list_tasks())}; "
                         "gym:<id> for a gymnasium env, --task-module FILE for your own")
    task = _TASKS[name]
    return pixel_variant(task) if pixels and not task.cameras else task


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def pixel_variant(task: TaskConfig, cameras: tuple[CameraSpec, ...] = SIM_CAMERAS) -> TaskConfig:
    """The same task seen through cameras, without privileged object positions."""
    return dataclasses.replace(task, cameras=cameras, scene_objects=())


def with_overrides(task: TaskConfig, **overrides) -> TaskConfig:
    """``dataclasses.replace`` with a clear error for unknown fields; ``camera_size=64`` (or ``[h, w]``) sets the
    size every camera of the task is resized to."""
    if "camera_size" in overrides:
        size = overrides.pop("camera_size")
        size = (size, size) if isinstance(size, int) else tuple(size)
        if len(size) != 2 or not all(isinstance(v, int) and v >= 8 for v in size):
            raise ValueError(f"camera_size: expected an integer >= 8 or [height, width], got {size!r}")
        cameras = overrides.get("cameras", task.cameras)
        if not cameras:
            raise ValueError(f"camera_size: task {task.name!r} has no camera (train with --pixels)")
        overrides["cameras"] = tuple(dataclasses.replace(cam, size=size) for cam in cameras)
    known = {field.name for field in dataclasses.fields(TaskConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown TaskConfig fields {unknown}; known: {sorted(known)}")
    return dataclasses.replace(task, **overrides)


SIM_PRECISION = ImpedanceParams(translational_clip=(0.02, 0.02, 0.02), rotational_clip=(0.1, 0.1, 0.1))

PANDA_PICK_CUBE = TaskConfig(
    name="PandaPickCube",
    reset_pose=(0.5, 0.0, 0.2, *DOWN_QUAT),
    safety_box=SafetyBox(
        position_low=(0.3, -0.2, 0.005),
        position_high=(0.7, 0.2, 0.35),
        euler_low=(-0.15, -0.15, -np.pi / 4),
        euler_high=(0.15, 0.15, np.pi / 4),
        center_quat=DOWN_QUAT,
    ),
    reset_xy_range=0.02,
    precision=SIM_PRECISION,  # defaults otherwise: base-frame actions at 2 cm / 0.1 rad, binary gripper, 100 steps at 10 Hz
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
    reset_pose=(0.55, 0.0, 0.16, *DOWN_QUAT),
    safety_box=SafetyBox(
        position_low=(0.4, -0.15, 0.05),
        position_high=(0.7, 0.15, 0.3),
        euler_low=(-0.1, -0.1, -np.pi / 4),
        euler_high=(0.1, 0.1, np.pi / 4),
        center_quat=DOWN_QUAT,
    ),
    reset_xy_range=0.01,
    action_scale=(0.01, 0.05, 1.0),
    gripper_mode="none",
    precision=SIM_PRECISION,
    reset_hooks=(
        ResetHookSpec("reset_robot"),
        ResetHookSpec("scene_reset"),  # the twin puts the peg in the closed hand and moves the hole
        ResetHookSpec("go_to_reset_pose", (("duration", 1.5), ("settle", 0.8))),
    ),
    scene="peg_insertion",
    scene_objects=("hole",),
)


@dataclasses.dataclass(frozen=True)
class ReleaseAndRetreat:
    """A reset that leaves the scene as it is: open the hand where it is, rise ``rise`` m straight up, then go to
    the reset pose, so the object stays where the last episode left it (reset-free tasks; a task cycle's
    fallback, not this hook, puts the scene back)."""

    rise: float = 0.05  # m
    open_time: float = 0.6  # s for the hand to open fully from a grasp
    duration: float = 1.0  # s to the reset pose
    settle: float = 0.5

    def __call__(self, env, episode_index: int, rng: np.random.Generator) -> None:
        task = env.task
        env.client.set_impedance(task.precision)
        env.command_gripper(MAX_GRIPPER_WIDTH)
        for _ in range(int(round(self.open_time * task.control_hz))):
            env.wait_period()
        pose = np.asarray(env.read_state().tcp_pose, dtype=np.float64).copy()
        pose[2] = min(pose[2] + self.rise, task.safety_box.position_high[2])
        move_to_pose(env, pose, duration=max(self.rise / 0.1, env.period))
        GoToResetPose(duration=self.duration, settle=self.settle)(env, episode_index, rng)


register_hook("release_and_retreat", ReleaseAndRetreat)

_RELOCATE_X = twin_models.RELOCATE_REGIONS["A"][0]


def _relocate_task(name: str) -> TaskConfig:
    return dataclasses.replace(
        PANDA_PICK_CUBE,
        name=name,
        reset_pose=(_RELOCATE_X, 0.0, 0.15, *DOWN_QUAT),  # between the regions, 11 cm above the cube's top
        safety_box=dataclasses.replace(PANDA_PICK_CUBE.safety_box, position_low=(0.35, -0.2, 0.005),
                                       position_high=(0.65, 0.2, 0.3)),
        reset_hooks=(ResetHookSpec("release_and_retreat"),),
        scene="relocate",
    )


PANDA_RELOCATE_FW = _relocate_task("PandaRelocateFw")
PANDA_RELOCATE_BW = _relocate_task("PandaRelocateBw")

register_task(PANDA_PICK_CUBE)
register_task(PANDA_PEG_INSERTION)
register_task(PANDA_RELOCATE_FW, reward=relocate_reward("B"))
register_task(PANDA_RELOCATE_BW, reward=relocate_reward("A"))


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
    """Twin (lockstep) + ``LocalRobot`` (its guard enforcing the task's safety box) + ``FrankaEnv``.

    ``overrides`` replace ``TaskConfig`` fields; ``wrap=True`` adds ``default_wrappers``
    (relative frame, euler, flat state). ``seed`` seeds the twin and the env's first reset.
    """
    from robot_servers.backends.twin import TwinBackend, TwinConfig  # MuJoCo: only when a twin is built

    task = with_overrides(get_task(task_name, pixels=pixels), robot=robot, **overrides)
    backend = TwinBackend(TwinConfig(lockstep=True, seed=0 if seed is None else int(seed), **twin_options(task)))
    client = LocalRobot(backend, backend.cameras(), GuardConfig(safety_box=task.safety_box))
    env = FrankaEnv(client, task, reward_fn=make_reward(task), render_mode=render_mode)
    if seed is not None:
        env.np_random = np.random.default_rng(seed)
        env.action_space.seed(seed)
    return default_wrappers(env) if wrap else env


def twin_options(task: TaskConfig) -> dict:
    """The twin a task runs on (``TwinConfig`` fields): robot, scene, compliance and cameras with their crops."""
    sizes = {tuple(cam.size) for cam in task.cameras}
    options = dict(robot=task.robot, scene=task.scene, impedance=task.compliance,
                   cameras=tuple(cam.name for cam in task.cameras))
    if task.cameras:
        options["image_size"] = sizes.pop() if len(sizes) == 1 else (128, 128)
        crops = {cam.name: tuple(cam.crop) for cam in task.cameras if cam.crop is not None}
        if crops:
            options["crops"] = crops
    return options
