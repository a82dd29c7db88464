"""Facts about the Franka arms (Panda, FR3) shared by the real backends and the twin (no MuJoCo here)."""

from __future__ import annotations

import numpy as np

from robot_servers.control.pose import quat_to_matrix, wxyz_to_xyzw

HOME_Q = (0.0, -np.pi / 4, 0.0, -3 * np.pi / 4, 0.0, np.pi / 2, np.pi / 4)
"""Franka's "ready" joint configuration (rad): TCP at (0.307, 0, 0.487) pointing down."""

JOINT_FRAMES = (
    ((0.0, 0.0, 0.333), (1.0, 0.0, 0.0, 0.0)),
    ((0.0, 0.0, 0.0), (1.0, -1.0, 0.0, 0.0)),
    ((0.0, -0.316, 0.0), (1.0, 1.0, 0.0, 0.0)),
    ((0.0825, 0.0, 0.0), (1.0, 1.0, 0.0, 0.0)),
    ((-0.0825, 0.384, 0.0), (1.0, -1.0, 0.0, 0.0)),
    ((0.0, 0.0, 0.0), (1.0, 1.0, 0.0, 0.0)),
    ((0.088, 0.0, 0.0), (1.0, 1.0, 0.0, 0.0)),
)
"""Joint i's frame in link i−1's (position in m, rotation as an unnormalised wxyz quaternion): Franka's published
kinematics, the same for Panda and FR3; each joint turns its link about the frame's z axis."""
FLANGE_OFFSET = 0.107  # m along joint 7's axis
HAND_YAW = -np.pi / 4  # the hand sits turned about the flange's z axis
TCP_OFFSET = 0.1034  # m from the flange, Franka's default end-effector frame (between the fingertips)

_FRAME_ROTATIONS = tuple(quat_to_matrix(wxyz_to_xyzw(np.asarray(quat) / np.linalg.norm(quat)))
                         for _, quat in JOINT_FRAMES)


def _turn_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def tcp_frame(q) -> tuple[np.ndarray, np.ndarray]:
    """(position, rotation matrix) of the TCP in the base frame at joint angles ``q``."""
    rotation, position = np.eye(3), np.zeros(3)
    for (offset, _), frame, angle in zip(JOINT_FRAMES, _FRAME_ROTATIONS, np.asarray(q, dtype=np.float64)):
        position = position + rotation @ offset
        rotation = rotation @ frame @ _turn_z(angle)
    position = position + rotation[:, 2] * FLANGE_OFFSET
    rotation = rotation @ _turn_z(HAND_YAW)
    return position + rotation[:, 2] * TCP_OFFSET, rotation


def tcp_pose(q) -> np.ndarray:
    """TCP pose (xyz + quat xyzw) in the base frame at joint angles ``q``."""
    from robot_servers.control.impedance import matrix_to_quat_xyzw

    position, rotation = tcp_frame(q)
    quat = np.empty(4)
    matrix_to_quat_xyzw(rotation.ravel(), quat)
    return np.r_[position, quat]
