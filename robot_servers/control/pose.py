"""Pose math shared by the controller, the twin, the backends and the env.

Conventions used everywhere in the suite:
- quaternions are ``[x, y, z, w]`` (scalar last, as scipy and ROS messages);
- a pose is a 7-vector ``[x, y, z, qx, qy, qz, qw]`` in the robot base frame;
- euler angles are extrinsic ``xyz`` (roll, pitch, yaw), radians.
MuJoCo stores ``[w, x, y, z]``; convert at the MuJoCo boundary with ``wxyz_to_xyzw``.
"""

from __future__ import annotations

import numpy as np

IDENTITY_QUAT = np.array([0.0, 0.0, 0.0, 1.0])
DOWN_QUAT = (1.0, 0.0, 0.0, 0.0)  # gripper pointing at the table: π about the base x axis


def normalize_quat(q: np.ndarray) -> np.ndarray:
    """Unit quaternion with non-negative w (one representative of ±q)."""
    q = np.asarray(q, dtype=np.float64)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm < 1e-9):
        raise ValueError("quaternion has (near) zero norm")
    q = q / norm
    return np.where(q[..., 3:4] < 0, -q, q)


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a ⊗ b (apply b first, then a)."""
    ax, ay, az, aw = np.moveaxis(np.asarray(a, dtype=np.float64), -1, 0)
    bx, by, bz, bw = np.moveaxis(np.asarray(b, dtype=np.float64), -1, 0)
    return np.stack(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ],
        axis=-1,
    )


def quat_conjugate(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    return np.concatenate([-q[..., :3], q[..., 3:]], axis=-1)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """3×3 rotation matrix of a unit quaternion."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def quat_to_rotvec(q: np.ndarray) -> np.ndarray:
    """Axis-angle vector (angle in [0, π]) of a quaternion."""
    q = normalize_quat(q)
    sin_half = np.linalg.norm(q[:3])
    if sin_half < 1e-12:
        return 2.0 * q[:3]
    angle = 2.0 * np.arctan2(sin_half, q[3])
    return q[:3] / sin_half * angle


def rotvec_to_quat(v: np.ndarray) -> np.ndarray:
    """Quaternion of an axis-angle vector."""
    v = np.asarray(v, dtype=np.float64)
    angle = np.linalg.norm(v)
    if angle < 1e-12:
        return normalize_quat(np.concatenate([0.5 * v, [1.0]]))
    axis = v / angle
    return np.concatenate([axis * np.sin(angle / 2), [np.cos(angle / 2)]])


def quat_to_euler(q: np.ndarray) -> np.ndarray:
    """Extrinsic xyz euler angles (roll, pitch, yaw) of a quaternion."""
    m = quat_to_matrix(q)
    cos_pitch = np.hypot(m[0, 0], m[1, 0])
    pitch = np.arctan2(-m[2, 0], cos_pitch)  # atan2, not arcsin: accurate near ±90°
    if cos_pitch > 1e-12:
        roll = np.arctan2(m[2, 1], m[2, 2])
        yaw = np.arctan2(m[1, 0], m[0, 0])
    else:  # gimbal lock: put everything in yaw
        roll = 0.0
        yaw = np.arctan2(-m[0, 1], m[1, 1])
    return np.array([roll, pitch, yaw])


def euler_to_quat(euler: np.ndarray) -> np.ndarray:
    """Quaternion of extrinsic xyz euler angles (roll, pitch, yaw)."""
    roll, pitch, yaw = np.asarray(euler, dtype=np.float64)
    qx = np.array([np.sin(roll / 2), 0, 0, np.cos(roll / 2)])
    qy = np.array([0, np.sin(pitch / 2), 0, np.cos(pitch / 2)])
    qz = np.array([0, 0, np.sin(yaw / 2), np.cos(yaw / 2)])
    return normalize_quat(quat_multiply(qz, quat_multiply(qy, qx)))


def rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vector(s) v by quaternion q."""
    return np.asarray(v, dtype=np.float64) @ quat_to_matrix(q).T


def orientation_error(current: np.ndarray, desired: np.ndarray) -> np.ndarray:
    """Rotation vector (base frame) taking ``desired`` to ``current``: e such that current = exp(e) ⊗ desired."""
    return quat_to_rotvec(quat_multiply(current, quat_conjugate(desired)))


def pose_error(current: np.ndarray, desired: np.ndarray) -> np.ndarray:
    """6-D error [p − p_d, orientation_error] in the base frame (the impedance law's e)."""
    current = np.asarray(current, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    return np.concatenate([current[:3] - desired[:3], orientation_error(current[3:], desired[3:])])


def apply_delta(pose: np.ndarray, delta: np.ndarray, frame: str = "base") -> np.ndarray:
    """New pose after a 6-D delta (translation, rotation vector).

    ``frame="base"`` expresses the delta in the base frame; ``"ee"`` in the end-effector
    frame of ``pose`` (translation and rotation both rotated by the current orientation).
    """
    pose = np.asarray(pose, dtype=np.float64)
    delta = np.asarray(delta, dtype=np.float64)
    quat = pose[3:]
    if frame == "ee":
        translation = rotate(quat, delta[:3])
        new_quat = quat_multiply(quat, rotvec_to_quat(delta[3:]))
    elif frame == "base":
        translation = delta[:3]
        new_quat = quat_multiply(rotvec_to_quat(delta[3:]), quat)
    else:
        raise ValueError(f"frame must be 'base' or 'ee', got {frame!r}")
    return np.concatenate([pose[:3] + translation, normalize_quat(new_quat)])


def relative_pose(pose: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``pose`` expressed in the frame of ``reference`` (both base-frame poses)."""
    pose = np.asarray(pose, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    ref_inv = quat_conjugate(reference[3:])
    position = rotate(ref_inv, pose[:3] - reference[:3])
    return np.concatenate([position, normalize_quat(quat_multiply(ref_inv, pose[3:]))])


def compose_pose(reference: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Inverse of ``relative_pose``: a pose given in ``reference``'s frame, back in the base frame."""
    reference = np.asarray(reference, dtype=np.float64)
    local = np.asarray(local, dtype=np.float64)
    position = reference[:3] + rotate(reference[3:], local[:3])
    return np.concatenate([position, normalize_quat(quat_multiply(reference[3:], local[3:]))])


def wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    return np.concatenate([q[..., 1:], q[..., :1]], axis=-1)


def xyzw_to_wxyz(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    return np.concatenate([q[..., 3:], q[..., :3]], axis=-1)
