"""What the ROS 2 backend derives from the arm's topics: TCP velocity and the "controller not
following" fault. Pure numpy (no rclpy), so both are testable on their own.
"""

from __future__ import annotations

import collections

import numpy as np

from robot_servers.control.pose import quat_conjugate, quat_multiply, quat_to_matrix, quat_to_rotvec

TWIST = "twist"  # crisp's twist_broadcaster, rotated from the end-effector frame into the base frame
POSE_DIFFERENCE = "pose_difference"  # fallback: finite differences of current_pose


def twist_to_base(twist_ee: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """crisp's twist (end-effector frame) expressed in the base frame of ``pose``."""
    rotation = quat_to_matrix(pose[3:7])
    return np.concatenate([rotation @ twist_ee[:3], rotation @ twist_ee[3:6]])


class PoseDifferenceVelocity:
    """TCP velocity (base frame) from poses at least ``window`` seconds apart (stamps from the messages)."""

    def __init__(self, window: float = 0.02, size: int = 64):
        self.window = window
        self._poses: collections.deque[tuple[float, np.ndarray]] = collections.deque(maxlen=size)

    def add(self, stamp: float, pose: np.ndarray) -> None:
        if self._poses and stamp <= self._poses[-1][0]:
            return  # a repeated or reordered stamp carries no new motion
        self._poses.append((stamp, pose.copy()))

    def velocity(self) -> np.ndarray:
        if len(self._poses) < 2:
            return np.zeros(6)
        t1, p1 = self._poses[-1]
        t0, p0 = self._poses[0]
        for t, p in reversed(self._poses):
            if t1 - t >= self.window:
                t0, p0 = t, p
                break
        dt = t1 - t0
        if dt <= 0:
            return np.zeros(6)
        angular = quat_to_rotvec(quat_multiply(p1[3:7], quat_conjugate(p0[3:7]))) / dt
        return np.concatenate([(p1[:3] - p0[:3]) / dt, angular])


class FollowingMonitor:
    """Flags a controller that does not follow: the target is away from the measured pose, the
    arm has not moved for ``after`` seconds, and no contact force explains it."""

    def __init__(self, after: float, tolerance: float = 0.005, moved: float = 0.001, contact_force: float = 5.0):
        self.after, self.tolerance, self.moved, self.contact_force = after, tolerance, moved, contact_force
        self._anchor: tuple[float, np.ndarray] | None = None

    def reset(self) -> None:
        self._anchor = None

    def check(self, now: float, pose: np.ndarray, target: np.ndarray, force: np.ndarray | None) -> str | None:
        if self.after <= 0:
            return None
        error = float(np.linalg.norm(target[:3] - pose[:3]))
        if self._anchor is None or np.linalg.norm(pose[:3] - self._anchor[1][:3]) > self.moved or error < self.tolerance:
            self._anchor = (now, pose.copy())
            return None
        if force is not None and np.linalg.norm(force[:3]) > self.contact_force:
            self._anchor = (now, pose.copy())  # pressing on something: static for a reason
            return None
        if now - self._anchor[0] < self.after:
            return None
        return (f"controller not following: target {1000 * error:.0f} mm away and the arm static for "
                f"{now - self._anchor[0]:.1f} s; is cartesian_impedance_controller active?")
