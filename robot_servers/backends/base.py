"""The ``Backend`` interface every arm implements (twin, ROS 2, libfranka), and its data types.

All poses follow ``robot_servers.control.pose`` conventions (xyz + quaternion xyzw, base frame).
Commands reach a backend through ``robot_servers.guard.RobotGuard``, which validates them against
``robot_servers.limits`` and the safety box; a backend still refuses what its own arm cannot do
(joint limits, a fault state) with ``ValueError`` or ``RuntimeError`` and changes nothing.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Sequence

import numpy as np

from robot_servers.limits import IMPEDANCE_LIMITS, validate_impedance_field


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
    velocity_source: str = ""  # where tcp_vel comes from when a backend can say (ros2: "twist" | "pose_difference")
    warnings: list[str] = dataclasses.field(default_factory=list)  # degraded but usable (e.g. a fallback in use)

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
        kwargs["warnings"] = list(kwargs.get("warnings", []))
        return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class ImpedanceParams:
    """Cartesian impedance gains and error clips. ``None`` damping means critical damping, ``None``
    ``*_clip_neg`` a symmetric clip; ``*_ki`` are SERL's integral gains (0: no integral term)."""

    translational_stiffness: Sequence[float] = (2000.0, 2000.0, 2000.0)  # N/m
    rotational_stiffness: Sequence[float] = (150.0, 150.0, 150.0)  # Nm/rad
    translational_damping: Sequence[float] | None = None  # Ns/m; None → 2·sqrt(K)
    rotational_damping: Sequence[float] | None = None  # Nms/rad; None → 2·sqrt(K)
    translational_clip: Sequence[float] = (0.01, 0.01, 0.01)  # m, |error| bound per axis
    rotational_clip: Sequence[float] = (0.05, 0.05, 0.05)  # rad, |error| bound per axis
    nullspace_stiffness: float = 0.2  # Nm/rad
    joint1_nullspace_stiffness: float = 100.0  # Nm/rad (as SERL: keeps the elbow from drifting)
    torque_rate_limit: float = 1.0  # Nm per 1 ms tick
    translational_clip_neg: Sequence[float] | None = None  # m, error lower bound −clip_neg; None → −clip
    rotational_clip_neg: Sequence[float] | None = None  # rad, likewise
    translational_ki: Sequence[float] = (0.0, 0.0, 0.0)  # N/m per tick, on the summed clipped error
    rotational_ki: Sequence[float] = (0.0, 0.0, 0.0)  # Nm/rad per tick, likewise

    def validate(self) -> "ImpedanceParams":
        """Return a copy with float arrays; raise ValueError naming the first bad field (``robot_servers.limits``)."""
        values = {}
        for name in IMPEDANCE_LIMITS:
            value = getattr(self, name)
            values[name] = None if value is None else validate_impedance_field(name, value)
        return ImpedanceParams(**values)

    def damping(self) -> tuple[np.ndarray, np.ndarray]:
        """(translational, rotational) damping, critical (2·sqrt(K)) where not given."""
        kt = np.asarray(self.translational_stiffness, dtype=np.float64)
        kr = np.asarray(self.rotational_stiffness, dtype=np.float64)
        dt = 2 * np.sqrt(kt) if self.translational_damping is None else np.asarray(self.translational_damping, float)
        dr = 2 * np.sqrt(kr) if self.rotational_damping is None else np.asarray(self.rotational_damping, float)
        return dt, dr

    def clip_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) bounds of the 6-D error [translational, rotational]: −clip_neg (or −clip), +clip."""
        high = np.concatenate([self.translational_clip, self.rotational_clip]).astype(np.float64)
        low = np.concatenate([-np.asarray(neg if neg is not None else clip, dtype=np.float64)
                              for neg, clip in ((self.translational_clip_neg, self.translational_clip),
                                                (self.rotational_clip_neg, self.rotational_clip))])
        return low, high

    def require_plain_law(self, controller: str) -> "ImpedanceParams":
        """``self``, or ValueError naming the field where it needs an integral term or an asymmetric clip,
        which ``controller``'s law lacks (never ignored silently)."""
        for kind in ("translational", "rotational"):
            ki = np.asarray(getattr(self, f"{kind}_ki"), dtype=np.float64)
            if np.any(ki != 0.0):
                raise ValueError(f"{kind}_ki: {controller} has no integral term; send 0, got {ki.tolist()}")
            neg, clip = getattr(self, f"{kind}_clip_neg"), getattr(self, f"{kind}_clip")
            if neg is not None and not np.array_equal(np.asarray(neg, float), np.asarray(clip, float)):
                raise ValueError(f"{kind}_clip_neg: {controller} clips the error symmetrically; send None or "
                                 f"{kind}_clip ({np.asarray(clip, float).tolist()}), got {np.asarray(neg, float).tolist()}")
        return self

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: (np.asarray(v).tolist() if v is not None and not isinstance(v, float) else v) for k, v in out.items()}


class Backend(abc.ABC):
    """One arm (plus its hand). Implementations: twin, ros2, libfranka.

    Methods are thread-safe; commands return immediately (the arm moves in the backend's
    own control loop). Invalid input raises ``ValueError`` and leaves the arm as it was.
    """

    name: str = "backend"
    lockstep: bool = False  # True: time moves only in ``SimulatedBackend.advance``
    _cameras: dict[str, Any] = {}  # the cameras it opened itself; replaced, never changed in place

    def cameras(self) -> dict[str, Any]:
        """Cameras the backend opened itself (name -> ``Camera``; the robot server serves them)."""
        return dict(self._cameras)

    @abc.abstractmethod
    def state(self) -> RobotState: ...

    def hand_poses(self) -> tuple[np.ndarray, np.ndarray]:
        """(measured TCP pose, commanded target): what another arm's guard checks its hand against."""
        state = self.state()
        return state.tcp_pose, state.target_pose

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

    def home_joints(self) -> np.ndarray | None:
        """Where ``joint_reset(None)`` goes; None where only the arm's own server knows."""
        return None

    @abc.abstractmethod
    def recover(self) -> None:
        """Clear error flags / reflexes and hold the current pose."""

    def hold(self) -> None:
        """Make the current measured pose the target (used by watchdogs and safety stops)."""
        self.set_target(self.state().tcp_pose)

    def jacobian(self) -> np.ndarray | None:
        """(6, 7) TCP Jacobian at the current joints, base frame, linear rows first; None where the backend has none."""
        return None

    def impedance(self) -> ImpedanceParams | None:
        """The impedance parameters the controller applies now; None where the backend cannot report them."""
        return None

    def set_load(self, mass: float, center: np.ndarray, inertia: np.ndarray) -> None:
        """Payload model (kg, m from the flange, 3×3 kg·m²); backends that take one override this."""
        raise NotImplementedError(f"the {self.name} backend takes no payload model; configure the load on the arm")

    def close(self) -> None:
        """Release resources (threads, sockets). Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SimulatedBackend(Backend):
    """A simulated arm: the twin. Adds simulated time, ground truth and instant resets.

    ``lockstep`` twins advance only in ``advance``; real-time ones run their own clock and refuse it.
    """

    dt: float  # s per physics tick

    @abc.abstractmethod
    def advance(self, seconds: float) -> None:
        """Lockstep: run physics for ``seconds`` of simulated time."""

    @property
    @abc.abstractmethod
    def scene(self) -> dict[str, np.ndarray]:
        """Ground-truth poses (xyz + quat xyzw) of the task objects."""

    @abc.abstractmethod
    def reset_scene(self, seed: int | None = None) -> None:
        """Put the task objects at a random pose (deterministic for a seed)."""

    @abc.abstractmethod
    def reset_robot(self, q: np.ndarray | None = None) -> None:
        """Put the arm at rest at ``q`` (home when None) instantly."""
