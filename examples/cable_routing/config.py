"""Cable routing (SERL): slide a held cable into a clip fixed on the table."""

from __future__ import annotations

from examples.common import COMPLIANT, HUMAN_RESET, PRECISE, box_around
from robot_servers.control.pose import DOWN_QUAT
from serl.envs.task_config import CameraSpec, TaskConfig

CLIP = (0.55, -0.05, 0.04, *DOWN_QUAT)  # TCP pose with the cable seated in the clip: measure on your setup
RESET_POSE = (CLIP[0] - 0.06, CLIP[1] + 0.10, CLIP[2] + 0.05, *DOWN_QUAT)


def config() -> TaskConfig:
    return TaskConfig(
        name="CableRouting",
        robot="fr3",
        reset_pose=RESET_POSE,
        safety_box=box_around(CLIP, (0.10, 0.15, 0.0), z_below=0.02, z_above=0.10, rpy_half=(0.1, 0.1, 0.6)),
        reset_xy_range=0.03,
        reset_yaw_range=0.2,
        action_scale=(0.03, 0.1, 0.0),
        gripper_mode="none",  # the cable stays in the closed hand
        cameras=(CameraSpec("wrist", crop=(0, 80, 480, 480)), CameraSpec("side", crop=(40, 120, 400, 400))),
        max_episode_steps=100,
        compliance=COMPLIANT,
        precision=PRECISE,
        reward="classifier",
        reset_hooks=HUMAN_RESET,  # a person pulls the cable back out of the clip
        joint_reset_period=10,
    )
