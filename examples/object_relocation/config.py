"""Object relocation (SERL bin relocation), learned as two tasks that reset each other:
forward moves the object from bin A to bin B, backward moves it back, so no person resets the scene."""

from __future__ import annotations

from typing import Literal

import numpy as np

from examples.common import COMPLIANT, PRECISE, REAL_RESET, box_around, on_twin
from robot_servers.control.pose import DOWN_QUAT
from robot_servers.limits import MAX_GRIPPER_WIDTH
from serl.envs.task_config import CameraSpec, ResetHookSpec, TaskConfig
from serl.envs.task_cycles import TaskCycle

BIN_A = (0.45, -0.15, 0.12, *DOWN_QUAT)  # TCP poses above the bin centres: measure on your setup
BIN_B = (0.45, 0.15, 0.12, *DOWN_QUAT)
WORKSPACE = (0.45, 0.0, 0.06, *DOWN_QUAT)


def config(direction: Literal["forward", "backward"] = "forward") -> TaskConfig:
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction: expected 'forward' or 'backward', got {direction!r}")
    start = BIN_A if direction == "forward" else BIN_B
    return TaskConfig(
        name=f"ObjectRelocation{direction.capitalize()}",
        robot="fr3",
        reset_pose=start,
        safety_box=box_around(WORKSPACE, (0.12, 0.25, 0.0), z_below=0.05, z_above=0.15, rpy_half=(0.1, 0.1, np.pi / 2)),
        reset_xy_range=0.03,
        action_scale=(0.03, 0.1, 1.0),
        gripper_mode="binary",
        cameras=(CameraSpec("wrist", crop=(0, 80, 480, 480)), CameraSpec("front", crop=(60, 100, 360, 440))),
        max_episode_steps=100,
        compliance=COMPLIANT,
        precision=PRECISE,
        reward="classifier",  # one classifier per direction: "object in bin B" / "object in bin A"
        reset_hooks=(REAL_RESET[0], ResetHookSpec("go_to_reset_pose", (("gripper", MAX_GRIPPER_WIDTH),))),
        joint_reset_period=10,
    )


FORWARD = config("forward")
BACKWARD = config("backward")

CYCLE = TaskCycle(
    name="ObjectRelocation",
    tasks=(FORWARD.name, BACKWARD.name),
    fallback_hooks=(ResetHookSpec("wait_for_human", (
        ("prompt", "Neither direction can go on: put the object back in bin A, then press Enter."),)),),
)
"""One actor alternates forward and backward, each with its own learner and classifier (docs/reset_free.md);
when neither can go on, a person puts the object back."""


def sim_config() -> TaskConfig:
    """Forward relocation's first half on the twin: reach, grasp and lift the cube (ground-truth reward)."""
    reset_pose = (0.5, 0.0, 0.2, *DOWN_QUAT)
    return on_twin(
        FORWARD,
        name="ObjectRelocationTwin",
        scene="pick_cube",
        reset_pose=reset_pose,
        safety_box=box_around(reset_pose, (0.2, 0.2, 0.0), z_below=0.195, z_above=0.15, rpy_half=(0.15, 0.15, np.pi / 4)),
        reset_hooks=(ResetHookSpec("reset_robot"),
                     ResetHookSpec("go_to_reset_pose", (("gripper", MAX_GRIPPER_WIDTH),)),
                     ResetHookSpec("scene_reset")),
    )
