"""The task's safety box: bounds on the commanded target and on the measured pose.

Position is bounded per axis in the base frame. Orientation is bounded in extrinsic xyz euler
angles around the box's centre orientation, so the ±π wrap of roll for a downward-facing
gripper never matters (the same trick SERL needed |roll| for).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from robot_servers.control.pose import (
    DOWN_QUAT,
    euler_to_quat,
    quat_conjugate,
    quat_multiply,
    quat_to_euler,
    normalize_quat,
)


@dataclasses.dataclass(frozen=True)
class SafetyBox:
    """Axis-aligned box on position and euler deviation from ``center_quat``."""

    position_low: tuple[float, float, float] = (0.25, -0.35, 0.0)
    position_high: tuple[float, float, float] = (0.75, 0.35, 0.5)
    euler_low: tuple[float, float, float] = (-np.pi, -np.pi, -np.pi)
    euler_high: tuple[float, float, float] = (np.pi, np.pi, np.pi)
    center_quat: tuple[float, float, float, float] = DOWN_QUAT

    def __post_init__(self):
        for name in ("position_low", "position_high", "euler_low", "euler_high"):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.shape != (3,) or not np.all(np.isfinite(value)):
                raise ValueError(f"SafetyBox.{name}: expected 3 finite values, got {getattr(self, name)!r}")
        if np.any(np.asarray(self.position_low) > np.asarray(self.position_high)):
            raise ValueError("SafetyBox: position_low must be <= position_high")
        if np.any(np.asarray(self.euler_low) > np.asarray(self.euler_high)):
            raise ValueError("SafetyBox: euler_low must be <= euler_high")

    def _deviation(self, quat: np.ndarray) -> np.ndarray:
        return quat_to_euler(quat_multiply(quat_conjugate(np.asarray(self.center_quat)), quat))

    def clip(self, pose: np.ndarray) -> np.ndarray:
        """The nearest pose inside the box (position clipped, euler deviation clipped)."""
        pose = np.asarray(pose, dtype=np.float64)
        position = np.clip(pose[:3], self.position_low, self.position_high)
        deviation = self._deviation(pose[3:])
        clipped = np.clip(deviation, self.euler_low, self.euler_high)
        if np.allclose(clipped, deviation):
            quat = normalize_quat(pose[3:])
        else:
            quat = normalize_quat(quat_multiply(np.asarray(self.center_quat), euler_to_quat(clipped)))
        return np.concatenate([position, quat])

    def violation(self, pose: np.ndarray, tolerance: float = 0.0, rotation_tolerance: float | None = None) -> str | None:
        """None when ``pose`` is inside, else a message naming the axis.

        ``tolerance`` widens the position bounds (m) and, unless ``rotation_tolerance`` is given, the
        orientation bounds (rad) too.
        """
        pose = np.asarray(pose, dtype=np.float64)
        rotation_tolerance = tolerance if rotation_tolerance is None else rotation_tolerance
        for axis, value, low, high in zip("xyz", pose[:3], self.position_low, self.position_high):
            if value < low - tolerance or value > high + tolerance:
                return f"position {axis}={value:.4f} m outside [{low}, {high}]"
        for axis, value, low, high in zip(("roll", "pitch", "yaw"), self._deviation(pose[3:]), self.euler_low, self.euler_high):
            if value < low - rotation_tolerance or value > high + rotation_tolerance:
                return f"orientation {axis} deviation {value:.4f} rad outside [{low}, {high}]"
        return None

    def contains(self, pose: np.ndarray, tolerance: float = 0.0) -> bool:
        return self.violation(pose, tolerance) is None
