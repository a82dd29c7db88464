"""PCB component insertion (HIL-SERL): push a through-hole component's legs into a board."""

from __future__ import annotations

from examples.common import PRECISE, REAL_RESET, box_around, wrist_cameras
from robot_servers.control.pose import DOWN_QUAT
from robot_servers.backends.base import ImpedanceParams
from serl.envs.task_config import CameraSpec, TaskConfig

BOARD_ENTRY = (0.52, 0.05, 0.07, *DOWN_QUAT)  # TCP pose with the legs touching their holes: measure on your setup
RESET_POSE = (BOARD_ENTRY[0], BOARD_ENTRY[1], BOARD_ENTRY[2] + 0.02, *DOWN_QUAT)

# Legs bend easily: low stiffness and 5 mm clips keep insertion forces under ~10 N.
DELICATE = ImpedanceParams(
    translational_stiffness=(1500.0, 1500.0, 1500.0),
    rotational_stiffness=(100.0, 100.0, 100.0),
    translational_clip=(0.005, 0.005, 0.005),
    rotational_clip=(0.03, 0.03, 0.03),
)


def config() -> TaskConfig:
    return TaskConfig(
        name="PcbInsertion",
        robot="fr3",
        reset_pose=RESET_POSE,
        safety_box=box_around(BOARD_ENTRY, (0.015, 0.015, 0.0), z_below=0.004, z_above=0.04, rpy_half=(0.03, 0.03, 0.1)),
        reset_xy_range=0.005,
        action_scale=(0.005, 0.02, 0.0),
        gripper_mode="none",
        cameras=wrist_cameras(crop_1=(120, 160, 240, 240), crop_2=(120, 160, 240, 240))
        + (CameraSpec("side", crop=(160, 220, 200, 200)),),
        max_episode_steps=120,
        compliance=DELICATE,
        precision=PRECISE,
        reward="classifier",
        reset_hooks=REAL_RESET,
        joint_reset_period=30,
    )
