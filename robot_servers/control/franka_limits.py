"""Franka's motion limits and the reflexes that enforce them, for the twin and the direct backend.

Sources: Franka's "Robot and interface specifications" (FCI documentation, frankarobotics.github.io,
2024–2025: the Panda table and the FR3 table) and libfranka's ``include/franka/rate_limiting.h``
(0.9 – 0.15), which carries the same Panda numbers and the 1000 Nm/s torque rate for both arms.
FR3 joint velocity limits also shrink near the joint limits (position-based limits in libfranka
≥ 0.10); the table holds the datasheet maxima.

What the arm does with them (libfranka ``franka::Errors`` names): measured joint speed over the limit
stops it with ``joint_velocity_violation``, end-effector speed with ``cartesian_velocity_violation``,
a commanded torque stream changing faster than 1000 Nm/s with ``controller_torque_discontinuity``.
Acceleration and jerk limits bind commanded motion-generator trajectories (position/velocity
interfaces, e.g. a joint move); a torque stream is judged by torque rate and measured speed only.
"""

from __future__ import annotations

import dataclasses

import numpy as np

JOINT_VELOCITY_VIOLATION = "joint_velocity_violation"
CARTESIAN_VELOCITY_VIOLATION = "cartesian_velocity_violation"
TORQUE_DISCONTINUITY = "controller_torque_discontinuity"
REFLEXES = (JOINT_VELOCITY_VIOLATION, CARTESIAN_VELOCITY_VIOLATION, TORQUE_DISCONTINUITY)

# Peaks of the minimum-jerk profile s(τ) = 10τ³ − 15τ⁴ + 6τ⁵ per unit distance and duration:
# max ds/dτ, max d²s/dτ², max d³s/dτ³ (at τ = 0).
_MIN_JERK_PEAKS = (1.875, 5.7735, 60.0)


@dataclasses.dataclass(frozen=True)
class FrankaLimits:
    """One arm's limits: per joint (7) and for the end effector (translation, rotation, elbow)."""

    joint_position: tuple[tuple[float, ...], tuple[float, ...]]  # rad, (lower, upper)
    joint_velocity: tuple[float, ...]  # rad/s
    joint_acceleration: tuple[float, ...]  # rad/s²
    joint_jerk: tuple[float, ...]  # rad/s³
    torque: tuple[float, ...]  # Nm
    torque_rate: float  # Nm/s, every joint
    translation: tuple[float, float, float]  # m/s, m/s², m/s³
    rotation: tuple[float, float, float]  # rad/s, rad/s², rad/s³
    elbow: tuple[float, float, float]  # rad/s, rad/s², rad/s³

    def torque_step(self, dt: float) -> float:
        """Largest torque change per control tick of ``dt`` seconds (1 Nm at 1 kHz)."""
        return self.torque_rate * dt


FRANKA_LIMITS = {
    "panda": FrankaLimits(
        joint_position=((-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973),
                        (2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973)),
        joint_velocity=(2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61),
        joint_acceleration=(15.0, 7.5, 10.0, 12.5, 15.0, 20.0, 20.0),
        joint_jerk=(7500.0, 3750.0, 5000.0, 6250.0, 7500.0, 10000.0, 10000.0),
        torque=(87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0),
        torque_rate=1000.0,
        translation=(1.7, 13.0, 6500.0),
        rotation=(2.5, 25.0, 12500.0),
        elbow=(2.175, 10.0, 5000.0),
    ),
    "fr3": FrankaLimits(
        joint_position=((-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159),
                        (2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159)),
        joint_velocity=(2.62, 2.62, 2.62, 2.62, 5.26, 4.18, 5.26),
        joint_acceleration=(10.0,) * 7,
        joint_jerk=(5000.0,) * 7,
        torque=(87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0),
        torque_rate=1000.0,
        translation=(3.0, 9.0, 4500.0),
        rotation=(2.5, 17.0, 8500.0),
        elbow=(2.62, 10.0, 5000.0),
    ),
}


def limits_for(arm: str) -> FrankaLimits:
    """The table row of ``arm`` ("panda" or "fr3"); ValueError naming the choices otherwise."""
    if arm not in FRANKA_LIMITS:
        raise ValueError(f"arm: expected one of {sorted(FRANKA_LIMITS)}, got {arm!r}")
    return FRANKA_LIMITS[arm]


def velocity_reflex(limits: FrankaLimits, dq, tcp_vel=None) -> str | None:
    """The reflex a measured joint speed ``dq`` (7) or end-effector twist ``tcp_vel`` (6, base frame)
    triggers, as "<libfranka error>: <what and by how much>", or None when within the limits."""
    dq = np.abs(np.asarray(dq, dtype=np.float64))
    over = dq - np.asarray(limits.joint_velocity)
    if np.max(over) > 0.0:
        joint = int(np.argmax(over))
        return (f"{JOINT_VELOCITY_VIOLATION}: joint {joint + 1} at {dq[joint]:.3f} rad/s "
                f"(limit {limits.joint_velocity[joint]} rad/s)")
    if tcp_vel is not None:
        tcp_vel = np.asarray(tcp_vel, dtype=np.float64)
        speed, spin = float(np.linalg.norm(tcp_vel[:3])), float(np.linalg.norm(tcp_vel[3:]))
        if speed > limits.translation[0]:
            return f"{CARTESIAN_VELOCITY_VIOLATION}: end effector at {speed:.3f} m/s (limit {limits.translation[0]} m/s)"
        if spin > limits.rotation[0]:
            return f"{CARTESIAN_VELOCITY_VIOLATION}: end effector at {spin:.3f} rad/s (limit {limits.rotation[0]} rad/s)"
    return None


def torque_rate_reflex(limits: FrankaLimits, tau, tau_before, dt: float) -> str | None:
    """The reflex a commanded torque step from ``tau_before`` to ``tau`` over ``dt`` s triggers, or None."""
    rate = np.abs(np.asarray(tau, dtype=np.float64) - np.asarray(tau_before, dtype=np.float64)) / dt
    joint = int(np.argmax(rate))
    # libfranka allows 1e-3 of slack on every limit (kLimitEps); a law stepping exactly the limit passes.
    if rate[joint] > limits.torque_rate + 1e-3:
        return (f"{TORQUE_DISCONTINUITY}: joint {joint + 1} torque changing at {rate[joint]:.0f} Nm/s "
                f"(limit {limits.torque_rate:.0f} Nm/s)")
    return None


def min_jerk_duration(limits: FrankaLimits, start, goal, fraction: float = 1.0) -> float:
    """Shortest duration (s) of a minimum-jerk joint move ``start`` → ``goal`` whose peak velocity,
    acceleration and jerk stay within ``fraction`` of the joint limits."""
    distance = np.abs(np.asarray(goal, dtype=np.float64) - np.asarray(start, dtype=np.float64))
    v_peak, a_peak, j_peak = _MIN_JERK_PEAKS
    bounds = [
        v_peak * distance / (fraction * np.asarray(limits.joint_velocity)),
        np.sqrt(a_peak * distance / (fraction * np.asarray(limits.joint_acceleration))),
        np.cbrt(j_peak * distance / (fraction * np.asarray(limits.joint_jerk))),
    ]
    return float(max(np.max(b) for b in bounds))
