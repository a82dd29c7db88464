"""Joint resets: a minimum-jerk joint move within the arm's limits, tracked in torque mode by a joint PD
servo (the twin) or streamed to the arm's own joint controller (the libfranka torque loop)."""

from __future__ import annotations

import dataclasses

import numpy as np

from robot_servers.control.franka_limits import FrankaLimits, min_jerk_duration

JOINT_KP = np.array([600.0, 600.0, 600.0, 600.0, 250.0, 150.0, 50.0])  # Nm/rad
JOINT_KD = np.array([50.0, 50.0, 50.0, 50.0, 30.0, 25.0, 15.0])  # Nms/rad
JOINT_RESET_TOLERANCE = 5e-4  # rad; the servo settles well inside the 1 mrad spec
JOINT_RESET_DYNAMICS = 0.8  # fraction of the joint limits a plan may use (the servo lags a little)


@dataclasses.dataclass(frozen=True)
class JointMove:
    """A minimum-jerk move ``start`` → ``goal`` from time ``t0`` over ``duration`` seconds."""

    start: np.ndarray
    goal: np.ndarray
    t0: float
    duration: float

    @classmethod
    def plan(cls, limits: FrankaLimits, start, goal, t0: float, duration: float) -> "JointMove":
        """The move, stretched (as franky plans one) where ``duration`` would exceed the arm's limits."""
        start, goal = np.array(start, dtype=np.float64), np.array(goal, dtype=np.float64)
        return cls(start, goal, float(t0),
                   max(float(duration), min_jerk_duration(limits, start, goal, JOINT_RESET_DYNAMICS)))

    def reference(self, t: float) -> np.ndarray:
        """The joint positions the move passes through at time ``t``."""
        s = min(max((t - self.t0) / self.duration, 0.0), 1.0)
        return self.start + s * s * s * (10 - 15 * s + 6 * s * s) * (self.goal - self.start)

    def torque(self, t: float, q, dq, coriolis, tau_limit) -> np.ndarray:
        """The servo's joint torque at time ``t`` (gravity excluded: the arm compensates it)."""
        tau = JOINT_KP * (self.reference(t) - q) - JOINT_KD * dq + coriolis
        return np.clip(tau, -tau_limit, tau_limit)

    def settled(self, t: float, q, dq) -> bool:
        """The reference has arrived and the arm rests on the goal."""
        return (t - self.t0 >= self.duration and float(np.max(np.abs(self.goal - q))) < JOINT_RESET_TOLERANCE
                and float(np.max(np.abs(dq))) < 1e-3)
