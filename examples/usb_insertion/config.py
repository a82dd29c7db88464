"""USB pick-up and insertion (HIL-SERL): grasp a USB connector lying on the table, insert it in a port."""

from __future__ import annotations

from examples.common import COMPLIANT, HUMAN_RESET, PRECISE, box_around, wrist_cameras
from robot_servers.control.pose import DOWN_QUAT
from serl.envs.task_config import CameraSpec, TaskConfig

PORT = (0.55, 0.08, 0.09, *DOWN_QUAT)  # TCP pose with the plug in the port: measure on your setup
RESET_POSE = (0.50, -0.02, 0.10, *DOWN_QUAT)  # above where the connector is laid down


def config() -> TaskConfig:
    return TaskConfig(
        name="UsbInsertion",
        robot="fr3",
        reset_pose=RESET_POSE,
        safety_box=box_around((0.525, 0.03, 0.09, *DOWN_QUAT), (0.06, 0.08, 0.0), z_below=0.07, z_above=0.06,
                              rpy_half=(0.05, 0.05, 0.4)),
        reset_xy_range=0.02,
        reset_yaw_range=0.1,
        action_scale=(0.015, 0.1, 1.0),
        gripper_mode="binary",
        cameras=wrist_cameras(crop_1=(0, 80, 480, 480), crop_2=(0, 80, 480, 480))
        + (CameraSpec("side", crop=(100, 160, 280, 320)),),
        max_episode_steps=120,
        compliance=COMPLIANT,
        precision=PRECISE,
        reward="classifier",
        reset_hooks=HUMAN_RESET,  # a person lays the connector back on the table
        joint_reset_period=20,
    )
