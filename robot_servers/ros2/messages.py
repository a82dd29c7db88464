"""Conversions between ROS 2 messages and our arrays. Needs rclpy message packages (extra ``ros2``).

Readers return ``None`` for a malformed message (wrong length, NaN/inf, zero quaternion) so a
subscriber can flag it instead of crashing its executor thread. Poses read back with w >= 0 (the
project's quaternion sign; crisp publishes either sign).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from geometry_msgs.msg import PoseStamped, TwistStamped, WrenchStamped
from sensor_msgs.msg import JointState


def stamp_from_seconds(msg_stamp, seconds: float) -> None:
    msg_stamp.sec = int(seconds)
    msg_stamp.nanosec = int(round((seconds - int(seconds)) * 1e9)) % 1_000_000_000


def pose_msg(pose: np.ndarray, frame_id: str, seconds: float) -> PoseStamped:
    msg = _stamped(PoseStamped(), frame_id, seconds)
    p, q = msg.pose.position, msg.pose.orientation
    p.x, p.y, p.z = (float(v) for v in pose[:3])
    q.x, q.y, q.z, q.w = (float(v) for v in pose[3:7])
    return msg


def read_pose(msg: PoseStamped) -> np.ndarray | None:
    p, q = msg.pose.position, msg.pose.orientation
    pose = np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w], dtype=np.float64)
    if not np.all(np.isfinite(pose)):
        return None
    norm = np.linalg.norm(pose[3:])
    if not 0.9 < norm < 1.1:
        return None
    pose[3:] /= norm
    if pose[6] < 0:
        pose[3:] = -pose[3:]
    return pose


def twist_msg(twist: np.ndarray, frame_id: str, seconds: float) -> TwistStamped:
    msg = _stamped(TwistStamped(), frame_id, seconds)
    _fill_pair(msg.twist.linear, msg.twist.angular, twist)
    return msg


def read_twist(msg: TwistStamped) -> np.ndarray | None:
    return _read_pair(msg.twist.linear, msg.twist.angular)


def wrench_msg(wrench: np.ndarray, frame_id: str, seconds: float) -> WrenchStamped:
    msg = _stamped(WrenchStamped(), frame_id, seconds)
    _fill_pair(msg.wrench.force, msg.wrench.torque, wrench)
    return msg


def read_wrench(msg: WrenchStamped) -> np.ndarray | None:
    return _read_pair(msg.wrench.force, msg.wrench.torque)


def _stamped(msg, frame_id: str, seconds: float):
    msg.header.frame_id = frame_id
    stamp_from_seconds(msg.header.stamp, seconds)
    return msg


def _fill_pair(first, second, values: np.ndarray) -> None:
    """Write a 6-vector into two Vector3 fields (linear/angular, force/torque)."""
    first.x, first.y, first.z = (float(v) for v in values[:3])
    second.x, second.y, second.z = (float(v) for v in values[3:6])


def _read_pair(first, second) -> np.ndarray | None:
    """Two Vector3 fields as one 6-vector; None when any entry is NaN/inf."""
    values = np.array([first.x, first.y, first.z, second.x, second.y, second.z])
    return values if np.all(np.isfinite(values)) else None


def joint_msg(names: Sequence[str], q, dq=None, effort=None, seconds: float = 0.0) -> JointState:
    msg = JointState()
    stamp_from_seconds(msg.header.stamp, seconds)
    msg.name = list(names)
    msg.position = [float(v) for v in q]
    if dq is not None:
        msg.velocity = [float(v) for v in dq]
    if effort is not None:
        msg.effort = [float(v) for v in effort]
    return msg


def read_joints(msg: JointState, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(q, dq) in the order of ``names``; joints missing from the message make it malformed."""
    if msg.name:
        index = {n: i for i, n in enumerate(msg.name)}
        if any(n not in index for n in names):
            return None
        order = [index[n] for n in names]
    else:
        order = list(range(len(names)))
    position = np.asarray(msg.position, dtype=np.float64)
    velocity = np.asarray(msg.velocity, dtype=np.float64) if len(msg.velocity) else np.zeros(len(position))
    if len(position) <= max(order) or len(velocity) <= max(order):
        return None
    q, dq = position[order], velocity[order]
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(dq))):
        return None
    return q, dq
