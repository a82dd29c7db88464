"""Pieces shared by the real-arm example tasks: impedance presets, camera layouts, hooks."""

from __future__ import annotations

import dataclasses

import numpy as np

from robot_servers.backends.base import ImpedanceParams
from robot_servers.control.safety import SafetyBox
from serl.envs.task_config import CameraSpec, ResetHookSpec, TaskConfig

# While the policy acts: soft, with tight error clips so contact forces stay small (SERL's insertion gains).
COMPLIANT = ImpedanceParams(
    translational_stiffness=(2000.0, 2000.0, 2000.0),
    rotational_stiffness=(150.0, 150.0, 150.0),
    translational_clip=(0.01, 0.01, 0.01),
    rotational_clip=(0.05, 0.05, 0.05),
)
# Between episodes: stiffer, so reset moves arrive where they are sent. The 2 cm error clip keeps a long
# reset move within the arm's joint-speed limits (a 10 cm clip drives joint 6 past them on the way home).
PRECISE = ImpedanceParams(
    translational_stiffness=(3000.0, 3000.0, 3000.0),
    rotational_stiffness=(250.0, 250.0, 250.0),
    translational_clip=(0.02, 0.02, 0.02),
    rotational_clip=(0.5, 0.5, 0.5),
)

SENSOR_SIZE = (480, 640)  # (H, W) of the RealSense colour stream the crops refer to


def box_around(pose, xyz_half: tuple[float, float, float], z_below: float, z_above: float,
               rpy_half: tuple[float, float, float]) -> SafetyBox:
    """A safety box centred on ``pose`` (xy symmetric, z from ``z_below`` under to ``z_above`` over)."""
    x, y, z = pose[:3]
    return SafetyBox(
        position_low=(x - xyz_half[0], y - xyz_half[1], z - z_below),
        position_high=(x + xyz_half[0], y + xyz_half[1], z + z_above),
        euler_low=tuple(-np.asarray(rpy_half)),
        euler_high=tuple(np.asarray(rpy_half)),
        center_quat=tuple(pose[3:]),
    )


def wrist_cameras(crop_1=None, crop_2=None, size=(128, 128)) -> tuple[CameraSpec, ...]:
    """Two wrist RealSense cameras, as in HIL-SERL. Put your serials here or pass --camera on the server."""
    return (CameraSpec("wrist_1", size=size, crop=crop_1), CameraSpec("wrist_2", size=size, crop=crop_2))


REAL_RESET = (
    ResetHookSpec("joint_reset"),  # every TaskConfig.joint_reset_period episodes
    ResetHookSpec("go_to_reset_pose"),
)
HUMAN_RESET = REAL_RESET + (ResetHookSpec("wait_for_human"),)


def on_twin(task: TaskConfig, *, name: str, scene: str, reset_pose, safety_box: SafetyBox,
            reset_hooks: tuple[ResetHookSpec, ...]) -> TaskConfig:
    """``task`` on the MuJoCo twin: the Panda, its wrist and front cameras, ground-truth reward, no joint resets."""
    return dataclasses.replace(
        task,
        name=name,
        robot="panda",
        scene=scene,
        reset_pose=reset_pose,
        safety_box=safety_box,
        cameras=(CameraSpec("wrist"), CameraSpec("front")),
        reward="ground_truth",
        reset_hooks=reset_hooks,
        joint_reset_period=0,
    )
