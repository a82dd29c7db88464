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


_CAPSULE_HEIGHTS = np.array([0.0, HAND_HEIGHT / 2, HAND_HEIGHT])
_CAPSULE_RADII = np.array([HAND_RADIUS] * 3 + [WRIST[2]])


def hand_capsules(poses: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The capsules that stand for the hand and wrist at each TCP pose in ``poses`` (..., 7): their ends (two
    (..., 4, 3) arrays) and radii (4,)."""
    poses = np.asarray(poses, dtype=np.float64)
    x, y, z, w = np.moveaxis(poses[..., 3:] / np.linalg.norm(poses[..., 3:], axis=-1, keepdims=True), -1, 0)
    finger_axis = np.stack([2 * (x * y - z * w), 1 - 2 * (x * x + z * z), 2 * (y * z + x * w)], axis=-1)
    up = -np.stack([2 * (x * z + y * w), 2 * (y * z - x * w), 1 - 2 * (x * x + y * y)], axis=-1)
    along = (finger_axis * HAND_HALF_WIDTH)[..., None, :]
    tcp, up = poses[..., None, :3], up[..., None, :]
    centres = tcp + _CAPSULE_HEIGHTS[:, None] * up
    low, high, _ = WRIST
    starts = np.concatenate([centres - along, tcp + low * up], axis=-2)
    ends = np.concatenate([centres + along, tcp + high * up], axis=-2)
    return starts, ends, _CAPSULE_RADII


def segment_distance(p1: np.ndarray, q1: np.ndarray, p2: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Shortest distance between the segments p1–q1 and p2–q2 (closest points by clamped parameters); points
    (..., 3) broadcast against each other, one distance per segment pair."""
    d1, d2, r = q1 - p1, q2 - p2, p1 - p2
    a, e = np.sum(d1 * d1, axis=-1), np.sum(d2 * d2, axis=-1)
    b, c, f = np.sum(d1 * d2, axis=-1), np.sum(d1 * r, axis=-1), np.sum(d2 * r, axis=-1)
    denominator = a * e - b * b
    parallel = denominator <= 1e-12
    s = np.where(parallel, 0.0, np.clip((b * f - c * e) / np.where(parallel, 1.0, denominator), 0.0, 1.0))
    t = (b * s + f) / e
    beyond = (t < 0.0) | (t > 1.0)
    t = np.clip(t, 0.0, 1.0)
    s = np.where(beyond, np.clip((b * t - c) / a, 0.0, 1.0), s)
    return np.linalg.norm(p1 + d1 * s[..., None] - (p2 + d2 * t[..., None]), axis=-1)


def hands_gaps(poses: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Air between each hand (and wrist) at a TCP pose in ``poses`` (N, 7) and each in ``others`` (M, 7), one
    frame: (N, M), negative where two overlap."""
    p1, q1, r = hand_capsules(np.atleast_2d(poses))
    p2, q2, _ = hand_capsules(np.atleast_2d(others))
    distances = segment_distance(p1[:, None, :, None], q1[:, None, :, None], p2[None, :, None], q2[None, :, None])
    return (distances - r[:, None] - r[None, :]).min(axis=(2, 3))


def hands_gap(a: np.ndarray, b: np.ndarray) -> float:
    """Air between two hands (and wrists) at TCP poses ``a`` and ``b`` (one frame); negative when they overlap."""
    return float(hands_gaps(a, b)[0, 0])


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
        return self.path_violation([current, target], others)

    def path_violation(self, path: list[np.ndarray], others: list[np.ndarray]) -> str | None:
        """``violation`` for each step along ``path`` (the hand's poses in order, the first where it is now)."""
        gaps = hands_gaps(np.stack(path), np.stack(others)).min(axis=1)
        for before, new in zip(gaps, gaps[1:]):
            if new < self.clearance and not new > before:
                return f"the hands would be {100 * new:.1f} cm apart, inside the {100 * self.clearance:.0f} cm clearance"
        return None
