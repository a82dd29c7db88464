"""The ``Backend`` interface every arm implements (twin, ROS 2, libfranka), and its data types.

All poses follow ``robot_servers.control.pose`` conventions (xyz + quaternion xyzw, base frame).
A backend validates its own inputs: NaN/inf, wrong shapes, unsafe gains and gripper widths
outside ``[0, MAX_GRIPPER_WIDTH]`` raise ``ValueError`` naming the field and change nothing.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Sequence

import numpy as np

MAX_GRIPPER_WIDTH = 0.08  # m, Franka hand fully open

# Safe ranges for run-time impedance changes (SERL's dynamic_reconfigure ranges).
STIFFNESS_LIMITS = {"translational": (0.0, 6000.0), "rotational": (0.0, 300.0)}
DAMPING_LIMITS = {"translational": (0.0, 400.0), "rotational": (0.0, 30.0)}


@dataclasses.dataclass
class RobotState:
    """A snapshot of the arm. Arrays are float64 numpy arrays."""

    tcp_pose: np.ndarray  # (7,) xyz + quat xyzw, base frame
    tcp_vel: np.ndarray  # (6,) linear (m/s) + angular (rad/s), base frame
    wrench: np.ndarray  # (6,) external force (N) + torque (Nm) at the TCP, base frame
    q: np.ndarray  # (7,) joint positions, rad
    dq: np.ndarray  # (7,) joint velocities, rad/s
    gripper_width: float  # m, 0 closed .. 0.08 open
    target_pose: np.ndarray  # (7,) the equilibrium pose the controller tracks now
    controller_mode: str = "impedance"  # "impedance" | "joint" | "hold" | "idle"
    errors: list[str] = dataclasses.field(default_factory=list)  # empty when healthy
    timestamp: float = 0.0  # seconds, backend clock (sim time for the twin)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (lists instead of arrays)."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, np.ndarray):
                out[key] = value.tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RobotState":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"unknown RobotState fields: {sorted(unknown)}")
        kwargs = dict(data)
        for key in ("tcp_pose", "tcp_vel", "wrench", "q", "dq", "target_pose"):
            kwargs[key] = np.asarray(kwargs[key], dtype=np.float64)
        kwargs["gripper_width"] = float(kwargs["gripper_width"])
        kwargs["errors"] = list(kwargs.get("errors", []))
        return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class ImpedanceParams:
    """Cartesian impedance gains and error clips. ``None`` damping means critical damping."""

    translational_stiffness: Sequence[float] = (2000.0, 2000.0, 2000.0)  # N/m
    rotational_stiffness: Sequence[float] = (150.0, 150.0, 150.0)  # Nm/rad
    translational_damping: Sequence[float] | None = None  # Ns/m; None → 2·sqrt(K)
    rotational_damping: Sequence[float] | None = None  # Nms/rad; None → 2·sqrt(K)
    translational_clip: Sequence[float] = (0.01, 0.01, 0.01)  # m, |error| bound per axis
    rotational_clip: Sequence[float] = (0.05, 0.05, 0.05)  # rad, |error| bound per axis
    nullspace_stiffness: float = 0.2  # Nm/rad
    joint1_nullspace_stiffness: float = 100.0  # Nm/rad (as SERL: keeps the elbow from drifting)
    torque_rate_limit: float = 1.0  # Nm per 1 ms tick

    def validate(self) -> "ImpedanceParams":
        """Return a copy with float arrays; raise ValueError naming the first bad field."""

        def vec(name: str, value, low: float, high: float) -> np.ndarray:
            arr = np.asarray(value, dtype=np.float64)
            if arr.shape != (3,):
                raise ValueError(f"{name}: expected 3 values, got shape {arr.shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name}: values must be finite, got {arr.tolist()}")
            if np.any(arr < low) or np.any(arr > high):
                raise ValueError(f"{name}: values must lie in [{low}, {high}], got {arr.tolist()}")
            return arr

        def scalar(name: str, value, low: float, high: float) -> float:
            value = float(value)
            if not np.isfinite(value) or not low <= value <= high:
                raise ValueError(f"{name}: must be finite and in [{low}, {high}], got {value}")
            return value

        kt = vec("translational_stiffness", self.translational_stiffness, *STIFFNESS_LIMITS["translational"])
        kr = vec("rotational_stiffness", self.rotational_stiffness, *STIFFNESS_LIMITS["rotational"])
        dt = None if self.translational_damping is None else vec(
            "translational_damping", self.translational_damping, *DAMPING_LIMITS["translational"])
        dr = None if self.rotational_damping is None else vec(
            "rotational_damping", self.rotational_damping, *DAMPING_LIMITS["rotational"])
        return ImpedanceParams(
            translational_stiffness=kt,
            rotational_stiffness=kr,
            translational_damping=dt,
            rotational_damping=dr,
            translational_clip=vec("translational_clip", self.translational_clip, 1e-4, 1.0),
            rotational_clip=vec("rotational_clip", self.rotational_clip, 1e-4, np.pi),
            nullspace_stiffness=scalar("nullspace_stiffness", self.nullspace_stiffness, 0.0, 100.0),
            joint1_nullspace_stiffness=scalar(
                "joint1_nullspace_stiffness", self.joint1_nullspace_stiffness, 0.0, 200.0),
            torque_rate_limit=scalar("torque_rate_limit", self.torque_rate_limit, 1e-3, 10.0),
        )

    def damping(self) -> tuple[np.ndarray, np.ndarray]:
        """(translational, rotational) damping, critical (2·sqrt(K)) where not given."""
        kt = np.asarray(self.translational_stiffness, dtype=np.float64)
        kr = np.asarray(self.rotational_stiffness, dtype=np.float64)
        dt = 2 * np.sqrt(kt) if self.translational_damping is None else np.asarray(self.translational_damping, float)
        dr = 2 * np.sqrt(kr) if self.rotational_damping is None else np.asarray(self.rotational_damping, float)
        return dt, dr

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: (np.asarray(v).tolist() if v is not None and not isinstance(v, float) else v) for k, v in out.items()}


def validate_pose(pose, field: str = "pose") -> np.ndarray:
    """A (7,) finite pose with a normalised quaternion, or ValueError naming ``field``."""
    arr = np.asarray(pose, dtype=np.float64)
    if arr.shape != (7,):
        raise ValueError(f"{field}: expected 7 values (xyz + quat xyzw), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{field}: values must be finite, got {arr.tolist()}")
    norm = np.linalg.norm(arr[3:])
    if not 0.9 < norm < 1.1:
        raise ValueError(f"{field}: quaternion norm {norm:.3f} is not close to 1")
    from robot_servers.control.pose import normalize_quat

    return np.concatenate([arr[:3], normalize_quat(arr[3:])])


def validate_gripper(width, field: str = "gripper") -> float:
    """A finite width in [0, MAX_GRIPPER_WIDTH] m, or ValueError naming ``field``."""
    try:
        value = float(width)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: expected a number in [0, {MAX_GRIPPER_WIDTH}] m, got {width!r}") from None
    if not np.isfinite(value) or not 0.0 <= value <= MAX_GRIPPER_WIDTH:
        raise ValueError(f"{field}: width must be finite and in [0, {MAX_GRIPPER_WIDTH}] m, got {value}")
    return value


class Backend(abc.ABC):
    """One arm (plus its hand). Implementations: twin, ros2, libfranka.

    Methods are thread-safe; commands return immediately (the arm moves in the backend's
    own control loop). Invalid input raises ``ValueError`` and leaves the arm as it was.
    """

    name: str = "backend"

    @abc.abstractmethod
    def state(self) -> RobotState: ...

    @abc.abstractmethod
    def set_target(self, pose: np.ndarray, gripper: float | None = None) -> None:
        """New equilibrium pose for the impedance controller (and optionally a gripper width)."""

    @abc.abstractmethod
    def set_gripper(self, width: float) -> None:
        """Non-blocking: start moving the fingers towards ``width`` (0 = close/grasp, 0.08 = open)."""

    @abc.abstractmethod
    def set_impedance(self, params: ImpedanceParams) -> None: ...

    @abc.abstractmethod
    def joint_reset(self, q: np.ndarray | None = None, duration: float = 3.0) -> None:
        """Blocking joint-space move to ``q`` (home when None), then impedance control resumes there."""

    @abc.abstractmethod
    def recover(self) -> None:
        """Clear error flags / reflexes and hold the current pose."""

    def hold(self) -> None:
        """Make the current measured pose the target (used by watchdogs and safety stops)."""
        self.set_target(self.state().tcp_pose)

    def close(self) -> None:
        """Release resources (threads, sockets). Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
