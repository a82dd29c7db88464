"""RAM insertion (HIL-SERL): press a held RAM stick into a motherboard slot."""

from __future__ import annotations

from examples.common import PRECISE, REAL_RESET, box_around, wrist_cameras
from robot_servers.control.pose import DOWN_QUAT
from robot_servers.backends.base import ImpedanceParams
from serl.envs.task_config import CameraSpec, TaskConfig

SLOT = (0.58, 0.02, 0.12, *DOWN_QUAT)  # TCP pose with the stick seated in the slot: measure on your setup
RESET_POSE = (SLOT[0], SLOT[1], SLOT[2] + 0.03, *DOWN_QUAT)

# Seating a RAM stick needs ~30 N down: stiffer z with a 15 mm clip, soft and tightly clipped elsewhere.
PRESS = ImpedanceParams(
    translational_stiffness=(1500.0, 1500.0, 2500.0),
    rotational_stiffness=(150.0, 150.0, 150.0),
    translational_clip=(0.006, 0.006, 0.015),
    rotational_clip=(0.05, 0.05, 0.05),
)


def config() -> TaskConfig:
    return TaskConfig(
        name="RamInsertion",
        robot="fr3",
        reset_pose=RESET_POSE,
        safety_box=box_around(SLOT, (0.02, 0.02, 0.0), z_below=0.005, z_above=0.05, rpy_half=(0.05, 0.05, 0.2)),
        reset_xy_range=0.01,
        reset_yaw_range=0.05,
        action_scale=(0.015, 0.1, 0.0),
        gripper_mode="none",
        cameras=wrist_cameras(crop_1=(40, 120, 400, 400), crop_2=(40, 120, 400, 400))
        + (CameraSpec("side", crop=(120, 200, 240, 240)),),
        max_episode_steps=100,
        compliance=PRESS,
        precision=PRECISE,
        reward="classifier",
        reset_hooks=REAL_RESET,
        joint_reset_period=20,
    )
