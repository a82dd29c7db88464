"""Peg insertion (SERL): a peg held in the hand goes into a hole fixed on the table."""

from __future__ import annotations

import numpy as np

from examples.common import COMPLIANT, PRECISE, REAL_RESET, box_around, on_twin, wrist_cameras
from robot_servers.control.pose import DOWN_QUAT
from serl.envs.task_config import ResetHookSpec, TaskConfig

HOLE_ENTRY = (0.55, 0.0, 0.10, *DOWN_QUAT)  # TCP pose with the peg tip just inside the hole: measure on your setup
RESET_POSE = (HOLE_ENTRY[0], HOLE_ENTRY[1], HOLE_ENTRY[2] + 0.06, *DOWN_QUAT)


def config() -> TaskConfig:
    """The real-arm task: two wrist cameras, reward from a trained classifier."""
    return TaskConfig(
        name="PegInsertion",
        robot="fr3",
        reset_pose=RESET_POSE,
        safety_box=box_around(HOLE_ENTRY, (0.04, 0.04, 0.0), z_below=0.01, z_above=0.10, rpy_half=(0.05, 0.05, 0.3)),
        reset_xy_range=0.02,
        reset_yaw_range=0.1,
        action_scale=(0.02, 0.1, 0.0),
        gripper_mode="none",
        cameras=wrist_cameras(crop_1=(0, 80, 480, 480), crop_2=(0, 80, 480, 480)),
        max_episode_steps=100,
        compliance=COMPLIANT,
        precision=PRECISE,
        reward="classifier",
        reset_hooks=REAL_RESET,
        joint_reset_period=20,
    )


def sim_config() -> TaskConfig:
    """The same task on the twin's peg-insertion scene with its ground-truth reward."""
    reset_pose = (0.55, 0.0, 0.16, *DOWN_QUAT)
    return on_twin(
        config(),
        name="PegInsertionTwin",
        scene="peg_insertion",
        reset_pose=reset_pose,
        safety_box=box_around(reset_pose, (0.15, 0.15, 0.0), z_below=0.11, z_above=0.14, rpy_half=(0.1, 0.1, np.pi / 4)),
        reset_hooks=(ResetHookSpec("reset_robot"), ResetHookSpec("scene_reset"), ResetHookSpec("go_to_reset_pose")),
    )
