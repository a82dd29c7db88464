"""Typed task configuration shared by the env, the robot server and the examples.

A task says where the arm starts, how far it may go, how actions are scaled, which cameras
it sees, how long an episode lasts, where reward comes from, and what happens between episodes.
The same config drives the twin and the real arm.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from robot_servers.backends.base import ImpedanceParams
from robot_servers.control.pose import rotate
from robot_servers.control.safety import SafetyBox

Pose7 = tuple[float, float, float, float, float, float, float]


@dataclasses.dataclass(frozen=True)
class CameraSpec:
    """One camera as the policy sees it: crop on the sensor image, then resize."""

    name: str
    size: tuple[int, int] = (128, 128)
    crop: tuple[int, int, int, int] | None = None  # (top, left, height, width) in sensor pixels
    serial: str | None = None  # RealSense serial / OpenCV device or URL on the real arm


@dataclasses.dataclass(frozen=True)
class ResetHookSpec:
    """A reset hook by registry name with keyword options (see serl/envs/reset_hooks.py)."""

    name: str
    options: tuple[tuple[str, object], ...] = ()


@dataclasses.dataclass(frozen=True)
class ActionLayout:
    """Where things sit in a task's action: xyz at [0:3], then rpy at [3:6] when the task rotates,
    then the gripper last when it has one."""

    rotation: bool = True
    gripper: bool = True

    @property
    def size(self) -> int:
        return 3 + 3 * self.rotation + self.gripper

    @property
    def gripper_index(self) -> int | None:
        return self.size - 1 if self.gripper else None

    def from_twist(self, twist: np.ndarray) -> np.ndarray:
        """The motion entries of an action (no gripper) from a 6-D twist."""
        return np.asarray(twist[: 6 if self.rotation else 3], dtype=np.float64)

    def rotate(self, quat: np.ndarray, action: np.ndarray) -> np.ndarray:
        """The action with its translation (and rotation) vectors rotated by ``quat``; the gripper unchanged."""
        out = np.asarray(action, dtype=np.float64).copy()
        out[:3] = rotate(quat, out[:3])
        if self.rotation:
            out[3:6] = rotate(quat, out[3:6])
        return out


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    name: str
    reset_pose: Pose7
    safety_box: SafetyBox = SafetyBox()
    reset_xy_range: float = 0.0  # m, uniform noise on the reset position
    reset_yaw_range: float = 0.0  # rad, uniform noise on the reset yaw
    action_scale: tuple[float, float, float] = (0.02, 0.1, 1.0)  # (m, rad, gripper) per unit action
    action_frame: Literal["base", "ee"] = "base"
    rotation_actions: bool = True  # False: actions are xyz (+ gripper); the hand keeps the episode's start orientation
    gripper_mode: Literal["continuous", "binary", "none"] = "binary"
    cameras: tuple[CameraSpec, ...] = ()
    max_episode_steps: int = 100
    control_hz: float = 10.0
    compliance: ImpedanceParams = ImpedanceParams()  # while the policy acts
    precision: ImpedanceParams = ImpedanceParams()  # during resets
    reward: Literal["ground_truth", "classifier", "keyboard"] = "ground_truth"
    dense_reward: bool = False
    reward_shaping: bool = False  # add potential-based shaping to the ground-truth reward (sim learning aid)
    shaping_discount: float = 1.0  # gamma of the shaping term gamma * phi(s') - phi(s): set it to the agent's discount
    reset_hooks: tuple[ResetHookSpec, ...] = (ResetHookSpec("go_to_reset_pose"),)
    joint_reset_period: int = 0  # episodes between joint resets; 0 = never
    robot: Literal["panda", "fr3"] = "panda"
    scene: str = "empty"  # twin scene name
    state_keys: tuple[str, ...] = ("tcp_pose", "tcp_vel", "wrench", "gripper_width")  # see franka_env.STATE_SIZES
    scene_objects: tuple[str, ...] = ()  # twin objects whose ground-truth pose enters the state (sim only)
    object_state: Literal["pose", "position", "offset"] = "pose"
    """How a scene object enters the state: '<name>_pose' (xyz + quat), '<name>_position' (xyz) or '<name>_offset'
    (its position less the TCP's, in the arm's base frame: what a hand servoing onto it needs)."""

    def __post_init__(self):
        if len(self.reset_pose) != 7:
            raise ValueError(f"TaskConfig.reset_pose: expected 7 values, got {len(self.reset_pose)}")
        if self.control_hz <= 0:
            raise ValueError("TaskConfig.control_hz must be positive")
        if self.max_episode_steps <= 0:
            raise ValueError("TaskConfig.max_episode_steps must be positive")
        if len({c.name for c in self.cameras}) != len(self.cameras):
            raise ValueError("TaskConfig.cameras: camera names must be unique")
        if not 0.0 < self.shaping_discount <= 1.0:
            raise ValueError(f"TaskConfig.shaping_discount: expected a value in (0, 1], got {self.shaping_discount}")
        if self.object_state not in ("pose", "position", "offset"):
            raise ValueError("TaskConfig.object_state: expected 'pose', 'position' or 'offset', "
                             f"got {self.object_state!r}")

    @property
    def action_layout(self) -> ActionLayout:
        """The layout of this task's actions (see ``rotation_actions``, ``gripper_mode``)."""
        return ActionLayout(rotation=self.rotation_actions, gripper=self.gripper_mode != "none")

    @property
    def object_state_size(self) -> int:
        """Entries per scene object in the state: 7 for a pose (xyz + quat), 3 for a position or an offset."""
        return 7 if self.object_state == "pose" else 3

    def object_state_key(self, name: str) -> str:
        """State name of scene object ``name``: '<name>_pose', '<name>_position' or '<name>_offset'."""
        return f"{name}_{self.object_state}"
