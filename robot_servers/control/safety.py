"""The task's safety box (bounds on the commanded target and on the measured pose) and two arms' hand clearance.

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
    quat_to_matrix,
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


# A Franka hand and wrist seen from another arm, as capsules in the TCP frame (z from the fingertips towards the
# flange, y along the finger axis): the hand as a blade along y at three heights up to the flange (the hand is 4 cm
# thick), and link 7 above it, a 4.5 cm radius around the tool axis.
HAND_HALF_WIDTH = 0.105  # m either side of the hand's centre along the finger axis
HAND_HEIGHT = 0.11  # m from the TCP up to the flange
HAND_RADIUS = 0.02
WRIST = (0.13, 0.22, 0.045)  # link 7: from, to (m above the TCP), radius


def hand_capsules(pose: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(end, end, radius) of the capsules that stand for the hand and wrist at TCP ``pose``."""
    pose = np.asarray(pose, dtype=np.float64)
    rotation = quat_to_matrix(pose[3:])
    along, up = rotation[:, 1] * HAND_HALF_WIDTH, -rotation[:, 2]
    capsules = [(pose[:3] + up * h - along, pose[:3] + up * h + along, HAND_RADIUS)
                for h in (0.0, HAND_HEIGHT / 2, HAND_HEIGHT)]
    low, high, radius = WRIST
    capsules.append((pose[:3] + up * low, pose[:3] + up * high, radius))
    return capsules


def segment_distance(p1: np.ndarray, q1: np.ndarray, p2: np.ndarray, q2: np.ndarray) -> float:
    """Shortest distance between the segments p1–q1 and p2–q2 (closest points by clamped parameters)."""
    d1, d2, r = q1 - p1, q2 - p2, p1 - p2
    a, e, f = d1 @ d1, d2 @ d2, d2 @ r
    c, b = d1 @ r, d1 @ d2
    denominator = a * e - b * b
    s = float(np.clip((b * f - c * e) / denominator, 0.0, 1.0)) if denominator > 1e-12 else 0.0
    t = (b * s + f) / e
    if t < 0.0 or t > 1.0:
        t = float(np.clip(t, 0.0, 1.0))
        s = float(np.clip((b * t - c) / a, 0.0, 1.0))
    return float(np.linalg.norm(p1 + d1 * s - (p2 + d2 * t)))


def hands_gap(a: np.ndarray, b: np.ndarray) -> float:
    """Air between two hands (and wrists) at TCP poses ``a`` and ``b`` (one frame); negative when they overlap."""
    return min(segment_distance(p1, q1, p2, q2) - r1 - r2
               for p1, q1, r1 in hand_capsules(a) for p2, q2, r2 in hand_capsules(b))


@dataclasses.dataclass(frozen=True)
class HandClearance:
    """Two arms' hands and wrists keep ``clearance`` of air between them (``hands_gap``). A target with less is a
    violation unless it moves the hands apart."""

    clearance: float = 0.02  # m

    def __post_init__(self):
        if not (np.isfinite(self.clearance) and 0.0 < self.clearance <= 1.0):
            raise ValueError(f"HandClearance.clearance: expected a distance in (0, 1] m, got {self.clearance!r}")

    def violation(self, target: np.ndarray, current: np.ndarray, others: list[np.ndarray]) -> str | None:
        """None when the hand at ``target`` keeps the clearance to every pose in ``others``, or moves away from
        the nearest of them compared with ``current``; else a message (all poses in one frame)."""
        new = min(hands_gap(target, other) for other in others)
        if new >= self.clearance or new > min(hands_gap(current, other) for other in others):
            return None
        return f"the hands would be {100 * new:.1f} cm apart, inside the {100 * self.clearance:.0f} cm clearance"
