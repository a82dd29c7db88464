"""``RobotGuard``: the one gate every robot command passes, whoever sends it.

The HTTP server and the in-process ``LocalRobot`` both drive their backend through a guard, so a
twin rehearsal runs exactly the checks the real arm gets:

- command validation against ``robot_servers.limits`` (finite, right shape, unit quaternion, ranges);
- the task's safety box on targets (clip or reject) and on the measured pose (leaving it holds the
  arm and latches a safety stop until ``recover``);
- the watchdog: no command for ``watchdog_timeout`` holds the current pose (real-time backends);
- one motion at a time: while a joint reset runs, reads are served and every other command is refused;
- two arms served by one process (``ArmPair``): a target that would bring this arm's hand within the clearance of
  the other arm's hand, where it is or where it was last sent, is held (clip) or refused (reject).

A refused command raises a ``GuardError`` subclass and reaches no backend.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
import uuid
from typing import Any, Callable, Literal, Mapping

import numpy as np

from robot_servers.backends.base import Backend, ImpedanceParams, RobotState, SimulatedBackend
from robot_servers.control.pose import compose_pose
from robot_servers.control.safety import HandClearance, SafetyBox
from robot_servers.franka import tcp_pose
from robot_servers.limits import (
    JOINT_RESET_DURATION,
    MAX_ADVANCE_S,
    POSITIVE_IMPEDANCE,
    validate_commanded_impedance,
    validate_gripper,
    validate_joints,
    validate_load,
    validate_pose,
    validate_seconds,
)

log = logging.getLogger("robot_servers.guard")

ARM_SPEED = 0.05  # m/s: the measured-pose check arms once the arm is inside the box and slower than this


class GuardError(Exception):
    """A command the guard refused; nothing moved."""


class CommandRejected(GuardError, ValueError):
    """Bad input (NaN, wrong shape, out of range, outside the box in reject mode). ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field

    @classmethod
    def from_error(cls, exc: ValueError) -> "CommandRejected":
        """From a limits check's ValueError, whose message starts with the field ("pose: ...")."""
        message = str(exc)
        head, sep, _ = message.partition(":")
        field = head if sep and head.replace("_", "").replace(".", "").isalnum() else "body"
        return cls(field, message)


class SafetyStopActive(GuardError, RuntimeError):
    """The measured pose left the safety box; commands are refused until ``recover``."""


class RobotFault(GuardError, RuntimeError):
    """The backend is in a fault state (stale driver, reflex, unstable sim) and refused the command."""


class ArmBusy(GuardError, RuntimeError):
    """A joint reset is moving the arm; commands are refused until it ends (reads are served)."""


class NotSupported(GuardError, NotImplementedError):
    """The backend cannot do this (e.g. advance simulated time on a real arm)."""


_SAFETY_STOP_PREFIX = "safety_stop: "


def safety_stop_error(reason: str) -> str:
    """How a latched safety stop shows in a state's and ``/health``'s errors (``is_safety_stop_error`` reads it)."""
    return f"{_SAFETY_STOP_PREFIX}{reason}"


def is_safety_stop_error(error: str) -> bool:
    return str(error).startswith(_SAFETY_STOP_PREFIX)


class ArmPair:
    """Two arms whose guards keep their hands apart, with each arm's base pose (xyz + quat xyzw) in one shared
    frame. Each arm's guard joins with ``GuardConfig(paired=pair.arm(name))``; a check reads the other arm's
    backend directly, so it sees where that hand is now, not where it was at its last command."""

    def __init__(self, bases: Mapping[str, Any], clearance: HandClearance = HandClearance()):
        if len(bases) != 2:
            raise ValueError(f"ArmPair: expected the base poses of two arms, got {sorted(bases)}")
        self.bases = {name: _checked(validate_pose, pose, f"bases.{name}") for name, pose in bases.items()}
        self.clearance = clearance
        self.lock = threading.RLock()  # a check and the command it lets through, one arm at a time
        self.id = uuid.uuid4().hex[:12]  # names this pair in each arm's /health
        self._guards: dict[str, RobotGuard] = {}
        self._joint_paths: dict[str, list[np.ndarray]] = {}  # hand poses (shared frame) of a joint move under way

    def arm(self, name: str) -> "PairedArm":
        if name not in self.bases:
            raise ValueError(f"ArmPair: unknown arm {name!r}; the pair has {sorted(self.bases)}")
        return PairedArm(self, name)

    def attach(self, name: str, guard: "RobotGuard") -> None:
        self._guards[name] = guard

    def set_targets(self, targets: Mapping[str, tuple[Any, float | None]]) -> dict[str, Any]:
        """Both arms' (pose, gripper) set back to back, each through its own guard, as one step of a two-arm env
        sends them: each arm's target sent and whether it was clipped or held, and ``skew_s``, the time between
        the two. Both inputs are validated before either arm moves."""
        if set(targets) != set(self.bases):
            raise CommandRejected("targets", f"targets: expected one per arm {sorted(self.bases)}, got "
                                             f"{sorted(targets)}")
        missing = sorted(set(self.bases) - set(self._guards))
        if missing:
            raise RobotFault(f"arm {missing[0]} of the pair is not served")
        for arm, (pose, gripper) in targets.items():
            _checked(validate_pose, pose, f"targets.{arm}.pose")
            if gripper is not None:
                _checked(validate_gripper, gripper, f"targets.{arm}.gripper")
        guards = [self._guards[arm] for arm in self.bases]
        # Two arms of one simulated world: its lock held across both, so the physics takes both targets on the
        # same tick. Locks in the order every command takes them: guards, then the pair, then the world.
        world = getattr(guards[0].backend, "world", None)
        if world is not getattr(guards[1].backend, "world", None):
            world = None
        sent, times = {}, []
        with guards[0].lock, guards[1].lock, self.lock, (contextlib.nullcontext() if world is None else world.lock):
            for arm, guard in zip(self.bases, guards):
                try:
                    target, clipped = guard.set_target(*targets[arm])
                except CommandRejected as err:
                    raise CommandRejected(err.field, f"{arm} arm: {err}") from err
                except GuardError as err:
                    raise type(err)(f"{arm} arm: {err}") from err
                times.append(time.perf_counter())
                sent[arm] = {"target": target.tolist(), "clipped": clipped}
        return {"targets": sent, "skew_s": times[1] - times[0]}

    def violation(self, name: str, target: np.ndarray) -> str | None:
        """Why ``target`` (arm ``name``'s base frame) would bring the hands too close, or None."""
        (other,) = set(self.bases) - {name}
        if other not in self._guards:  # the other arm is not served yet
            return None
        my_tcp, _ = self._guards[name].backend.hand_poses()
        found = self.clearance.violation(self._shared(name, target), self._shared(name, my_tcp),
                                         self._hands_of(other))
        return None if found is None else f"{found} from the {other} arm's hand"

    def claim_joint_path(self, name: str, q_from, q_to) -> None:
        """Before arm ``name`` moves in joint space from ``q_from`` to ``q_to`` (a straight line, as every backend's
        joint reset moves): ``CommandRejected`` when its hand would pass within the clearance of the other arm's
        hand; else the other arm's targets keep clear of the whole path until ``release_joint_path``."""
        (other,) = set(self.bases) - {name}
        path = [self._shared(name, pose) for pose in joint_path_hands(q_from, q_to)]
        with self.lock:
            found = None if other not in self._guards else self.clearance.path_violation(path, self._hands_of(other))
            if found is not None:
                raise CommandRejected("q", f"q: the joint move would pass the {name} hand too close to the {other} "
                                           f"arm's hand ({found}); move that arm away first")
            self._joint_paths[name] = path

    def release_joint_path(self, name: str) -> None:
        with self.lock:
            self._joint_paths.pop(name, None)

    def _shared(self, arm: str, pose: np.ndarray) -> np.ndarray:
        return compose_pose(self.bases[arm], pose)

    def _hands_of(self, arm: str) -> list[np.ndarray]:
        """Where ``arm``'s hand may be (shared frame): now, at its target and along a joint move under way."""
        tcp, target = self._guards[arm].backend.hand_poses()
        return [self._shared(arm, tcp), self._shared(arm, target), *self._joint_paths.get(arm, ())]


def joint_path_hands(q_from, q_to, step: float = 0.005) -> list[np.ndarray]:
    """TCP poses along the straight joint-space line from ``q_from`` to ``q_to``, the first and last included and
    in between one wherever the hand has moved ``step`` m (or turned ``step`` / 0.1 rad, its blade's half length)."""
    q_from, q_to = np.asarray(q_from, dtype=np.float64), np.asarray(q_to, dtype=np.float64)
    samples = max(2, int(np.ceil(np.max(np.abs(q_to - q_from)) / 0.002)) + 1)
    poses = [tcp_pose(q_from + s * (q_to - q_from)) for s in np.linspace(0.0, 1.0, samples)]
    kept = [poses[0]]
    for pose in poses[1:-1]:
        last = kept[-1]
        turned = 2.0 * np.arccos(min(1.0, abs(float(np.dot(pose[3:], last[3:])))))
        if np.linalg.norm(pose[:3] - last[:3]) >= step or turned * 0.1 >= step:
            kept.append(pose)
    return kept + [poses[-1]]


@dataclasses.dataclass(frozen=True)
class PairedArm:
    """One arm of an ``ArmPair``, as its guard's config names it."""

    pair: ArmPair
    name: str

    def claim_joint_path(self, q_from, q_to) -> None:
        self.pair.claim_joint_path(self.name, q_from, q_to)

    def release_joint_path(self) -> None:
        self.pair.release_joint_path(self.name)


@dataclasses.dataclass(frozen=True)
class GuardConfig:
    """What the guard enforces. ``safety_box`` None: no box (the server warns about it)."""

    safety_box: SafetyBox | None = None
    on_violation: Literal["clip", "reject"] = "clip"  # what to do with a target outside the box
    measured_tolerance: float = 0.01  # m the measured position may exceed the box before a stop
    # rad the measured orientation may exceed it: a target clipped to a tight orientation bound is
    # overshot by about 0.015 rad while the impedance law settles, which must not stop the arm
    measured_rotation_tolerance: float = 0.05
    watchdog_timeout: float | None = 0.5  # s without a command → hold; None disables
    monitor_hz: float = 100.0  # rate of the watchdog / measured-pose checks
    paired: PairedArm | None = None  # the other arm this one keeps its hand away from (two arms in one process)

    def __post_init__(self):
        if self.on_violation not in ("clip", "reject"):
            raise ValueError(f"GuardConfig.on_violation must be 'clip' or 'reject', got {self.on_violation!r}")
        if self.watchdog_timeout is not None and not self.watchdog_timeout > 0:
            raise ValueError("GuardConfig.watchdog_timeout must be positive or None")
        if not (self.measured_tolerance >= 0 and self.measured_rotation_tolerance >= 0):
            raise ValueError("GuardConfig.measured_tolerance and measured_rotation_tolerance must be >= 0")
        if not self.monitor_hz > 0:
            raise ValueError("GuardConfig.monitor_hz must be positive")


def _checked(check: Callable, *args) -> Any:
    """Run a ``robot_servers.limits`` check; its ValueError becomes ``CommandRejected`` naming the field."""
    try:
        return check(*args)
    except ValueError as exc:
        raise CommandRejected.from_error(exc) from None


class RobotGuard:
    """Validation, safety box, measured-pose stop and watchdog around one backend.

    All commands run under one lock, so the watchdog never interleaves a hold with a command and the
    measured-pose check sees a consistent target. A joint reset holds the lock only to start and to
    end: while the arm moves, state reads go on and other commands are refused (``ArmBusy``).
    Lockstep backends get no watchdog thread (it would break run-to-run determinism); ``advance``
    checks the measured pose as the thread would.
    """

    def __init__(self, backend: Backend, config: GuardConfig = GuardConfig()):
        self.backend = backend
        self.config = config
        self.lockstep = backend.lockstep
        self.simulated = isinstance(backend, SimulatedBackend)
        self.lock = threading.RLock()
        self.session = uuid.uuid4().hex[:12]
        self.started = time.monotonic()
        self.last_command = time.monotonic()
        self.watchdog_tripped = False
        self.watchdog_trips = 0
        self.safety_stop: str | None = None
        self.safety_stops = 0
        # The measured-pose check arms once the arm is inside the box and nearly at rest (it may start
        # outside, e.g. at home above a low box, and swing on its way in) and disarms on recover, joint
        # reset and teleport, which may leave the box.
        self.armed = False
        self.joint_resetting = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if config.paired is not None:
            config.paired.pair.attach(config.paired.name, self)

    # -- commands
    def set_target(self, pose, gripper: float | None = None) -> tuple[np.ndarray, bool]:
        """New impedance equilibrium; returns the target actually sent and whether the box clipped it (or the
        other arm's hand held it)."""
        pose = _checked(validate_pose, pose, "pose")
        width = None if gripper is None else _checked(validate_gripper, gripper, "gripper")
        paired = self.config.paired
        with self._exclusive(), (contextlib.nullcontext() if paired is None else paired.pair.lock):
            self._require_no_stop()
            target, clipped = self._boxed(pose)
            target, held = self._apart(target)
            self._call(self.backend.set_target, target, width)
            return target, clipped or held

    def set_gripper(self, width: float) -> float:
        width = _checked(validate_gripper, width, "width")
        with self._exclusive():
            self._call(self.backend.set_gripper, width)
        return width

    def set_impedance(self, params: ImpedanceParams) -> ImpedanceParams:
        params = _checked(params.validate)
        for name in POSITIVE_IMPEDANCE:
            _checked(validate_commanded_impedance, name, getattr(params, name))
        with self._exclusive():
            self._call(self.backend.set_impedance, params)
        return params

    def joint_reset(self, q=None, duration: float = 3.0) -> None:
        """Blocking joint move (home when ``q`` is None); may leave the box, so the pose check re-arms after.

        The move runs outside the lock so that state reads and the monitor go on meanwhile; the pose
        check stays disarmed until it ends, and the watchdog does not hold the arm mid-move.
        """
        q = None if q is None else _checked(validate_joints, q, "q")
        duration = _checked(validate_seconds, duration, "duration", *JOINT_RESET_DURATION)
        paired = self.config.paired
        with self._exclusive():
            self._require_no_stop()
            if paired is not None:
                goal = q if q is not None else self.backend.home_joints()
                if goal is None:
                    raise CommandRejected("q", "q: this backend's home is not known here; give the joint reset's q, "
                                               "so that its path can be checked against the other arm's hand")
                paired.claim_joint_path(self.backend.state().q, goal)
            self.armed = False
            self.joint_resetting = True
        try:
            self._call(self.backend.joint_reset, q, duration)
        finally:
            with self.lock:
                self.joint_resetting = False
                self.armed = False
            if paired is not None:
                paired.release_joint_path()

    def clear_backend_errors(self) -> None:
        """Clear the arm's own errors (reflexes, a stale driver) but never a latched safety stop."""
        with self._exclusive():
            self._require_no_stop()
            if self.backend.state().errors:
                self._call(self.backend.recover)

    def set_load(self, mass: float, center, inertia) -> None:
        """Payload model on backends that take one (``NotSupported`` elsewhere); nothing changes on refusal."""
        mass, center, inertia = _checked(validate_load, mass, center, inertia)
        with self._exclusive():
            try:
                self.backend.set_load(mass, center, inertia)
            except NotImplementedError as exc:
                raise NotSupported(str(exc)) from None
            except ValueError as exc:
                raise CommandRejected.from_error(exc) from None

    def recover(self) -> None:
        """Clear backend errors and the safety stop; the arm holds its pose."""
        with self._exclusive():
            self._call(self.backend.recover)
            if self.safety_stop is not None:
                log.warning("safety stop cleared by recover (was: %s)", self.safety_stop)
            self.safety_stop = None
            self.armed = False  # re-armed once the measured pose is back inside

    # -- simulated backends only
    def advance(self, seconds: float) -> None:
        """Lockstep: advance in slices of 1/monitor_hz, checking the measured pose after each
        (as the monitor thread does in real time); slices add up to the same number of ticks."""
        backend = self._simulated("advance simulated time")
        if not self.lockstep:
            raise CommandRejected("advance", "only lockstep (simulated) backends can advance time; send 'wait'")
        seconds = _checked(validate_seconds, seconds, "seconds", 0.0, MAX_ADVANCE_S)
        with self._exclusive():
            if self.config.safety_box is None:
                self._call(backend.advance, seconds)
            else:
                ticks = int(round(seconds / backend.dt))
                per_slice = max(1, int(round(1.0 / (self.config.monitor_hz * backend.dt))))
                while ticks > 0:
                    n = min(per_slice, ticks)
                    self._call(backend.advance, n * backend.dt)
                    ticks -= n
                    self._check_measured(backend.state())
            self._commanded()
            self._check_measured(backend.state())

    def reset_robot(self, q=None) -> None:
        """Sim only: put the arm at rest at ``q`` (home when None) instantly."""
        backend = self._simulated("teleport the arm; use joint_reset")
        q = None if q is None else _checked(validate_joints, q, "q")
        with self._exclusive():
            self._require_no_stop()
            self.armed = False
            self._call(backend.reset_robot, q)

    def reset_scene(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Sim only: random object poses; returns the new scene."""
        backend = self._simulated("reset the scene")
        if seed is not None and not (isinstance(seed, (int, np.integer)) and 0 <= seed <= 2**32 - 1):
            raise CommandRejected("seed", f"seed: expected an integer in [0, 2**32 - 1], got {seed!r}")
        with self._exclusive():
            self._call(backend.reset_scene, seed)
            return backend.scene

    def scene(self) -> dict[str, np.ndarray]:
        return self._simulated("report a ground-truth scene").scene

    # -- observing
    def state(self) -> RobotState:
        """The measured state, checked against the box; an active safety stop shows as an error and mode 'hold'."""
        with self.lock:  # read and checked together: a read from before a joint reset ended must not arm the check
            state = self.backend.state()
            self._check_measured(state)
        if self.safety_stop is not None:
            state.errors = list(state.errors) + [safety_stop_error(self.safety_stop)]
            state.controller_mode = "hold"
        return state

    def health(self) -> dict[str, Any]:
        warnings: list[str] = []
        try:
            state = self.backend.state()
            errors, warnings = list(state.errors), list(state.warnings)
        except Exception as exc:  # health must answer even when the backend cannot
            errors = [f"backend state unavailable: {exc!r}"]
        if self.safety_stop is not None:
            errors.append(safety_stop_error(self.safety_stop))
        box = self.config.safety_box
        return {
            "ok": not errors,
            "backend": self.backend.name,
            "lockstep": self.lockstep,
            # which simulation a lockstep twin advances: two arms of one world share it (advance it once per period)
            "simulation": f"{os.getpid()}:{id(getattr(self.backend, 'world', self.backend))}" if self.lockstep else None,
            "session": self.session,
            "uptime_s": time.monotonic() - self.started,
            "errors": errors,
            "warnings": warnings,  # degraded but usable, e.g. a velocity estimated from pose differences
            "joint_reset_running": self.joint_resetting,
            # two arms served by one process: this arm's name and its pair (``/pair/target`` sets both arms)
            "pair": None if self.config.paired is None else {"id": self.config.paired.pair.id,
                                                            "arm": self.config.paired.name},
            "watchdog": {"timeout_s": self.config.watchdog_timeout, "active": self._watchdog_active(),
                         "holding": self.watchdog_tripped, "trips": self.watchdog_trips,
                         "since_last_command_s": time.monotonic() - self.last_command},
            "safety": {"box": None if box is None else dataclasses.asdict(box),
                       "on_violation": self.config.on_violation, "stopped": self.safety_stop is not None,
                       "reason": self.safety_stop, "stops": self.safety_stops, "armed": self.armed},
        }

    # -- the monitor thread (real-time backends)
    def start(self) -> None:
        if self.lockstep or self._thread is not None:
            return
        self._stop.clear()
        self.last_command = time.monotonic()
        self._thread = threading.Thread(target=self._monitor, name="robot-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def _watchdog_active(self) -> bool:
        return not self.lockstep and self.config.watchdog_timeout is not None

    def _monitor(self) -> None:
        period = 1.0 / self.config.monitor_hz
        timeout = self.config.watchdog_timeout
        while not self._stop.wait(period):
            try:
                if timeout is not None and not self.watchdog_tripped and time.monotonic() - self.last_command > timeout:
                    with self.lock:
                        if not self.joint_resetting and time.monotonic() - self.last_command > timeout:
                            self.backend.hold()
                            self.watchdog_tripped = True
                            self.watchdog_trips += 1
                            # an idle server trips after every command burst: only the first trip is news
                            first = self.watchdog_trips == 1
                            log.log(logging.WARNING if first else logging.DEBUG,
                                    "watchdog: no command for %.2f s, holding the current pose (trip %d%s)", timeout,
                                    self.watchdog_trips, "; later trips are logged at debug level" if first else "")
                with self.lock:  # a state read before a joint reset ends must not re-arm the check afterwards
                    self._check_measured(self.backend.state())
            except Exception:  # keep watching: a transient backend error must not end the watchdog
                log.exception("robot monitor iteration failed")

    # -- internals
    def _boxed(self, pose: np.ndarray) -> tuple[np.ndarray, bool]:
        box = self.config.safety_box
        violation = None if box is None else box.violation(pose)
        if violation is None:
            return pose, False
        if self.config.on_violation == "reject":
            raise CommandRejected("pose", f"pose: target outside the safety box: {violation}")
        return box.clip(pose), True

    def _apart(self, target: np.ndarray) -> tuple[np.ndarray, bool]:
        """``target``, or (clip) the target the arm holds now when it would bring the hands too close."""
        paired = self.config.paired
        violation = None if paired is None else paired.pair.violation(paired.name, target)
        if violation is None:
            return target, False
        if self.config.on_violation == "reject":
            raise CommandRejected("pose", f"pose: {violation}")
        return self.backend.hand_poses()[1], True

    def _check_measured(self, state: RobotState) -> None:
        box = self.config.safety_box
        if box is None:
            return
        with self.lock:
            violation = box.violation(state.tcp_pose, self.config.measured_tolerance,
                                      self.config.measured_rotation_tolerance)
            if not self.armed:
                self.armed = (not self.joint_resetting and violation is None
                              and float(np.linalg.norm(state.tcp_vel[:3])) < ARM_SPEED)
                return
            if violation is not None:
                self.latch_safety_stop(f"measured pose left the safety box: {violation}")

    def latch_safety_stop(self, reason: str) -> None:
        """Hold the arm and refuse every command until ``recover`` (a person's stop button, or the pose check)."""
        with self.lock:
            if self.safety_stop is not None:
                return
            self.backend.hold()
            self.safety_stop = reason
            self.safety_stops += 1
            log.error("SAFETY STOP: %s; holding until recover", reason)

    @contextlib.contextmanager
    def _exclusive(self):
        """The lock, for a command: refused while a joint reset moves the arm."""
        with self.lock:
            if self.joint_resetting:
                raise ArmBusy("a joint reset is moving the arm; wait for it to end (GET /health: joint_reset_running)")
            yield

    def _require_no_stop(self) -> None:
        if self.safety_stop is not None:
            raise SafetyStopActive(f"safety stop active ({self.safety_stop}); the arm holds its pose: recover to continue")

    def _simulated(self, what: str) -> SimulatedBackend:
        if not self.simulated:
            raise NotSupported(f"the {self.backend.name} backend cannot {what}")
        return self.backend

    def _commanded(self) -> None:
        self.last_command = time.monotonic()
        self.watchdog_tripped = False

    def _call(self, method, *args):
        """Call the backend; its own refusals become guard errors. Every accepted command feeds the watchdog."""
        try:
            result = method(*args)
        except ValueError as exc:  # the backend's own validation (e.g. joint limits): nothing moved
            raise CommandRejected.from_error(exc) from None
        except RuntimeError as exc:  # a real arm in a fault state refuses until recover
            raise RobotFault(str(exc)) from None
        self._commanded()
        return result
