"""``LibfrankaBackend``: a Franka arm (FR3 or Panda) over FCI through franky.

franky's ``CartesianImpedanceTracker`` runs the Cartesian impedance law in its own 1 kHz C++ thread;
this backend only swaps the reference it tracks, so Python threads (HTTP, cameras) cannot starve it.
The per-axis error clip of our impedance law is franky's ``translational/rotational_error_clip``.
A monitor thread turns a stopped controller (reflex, lost connection) into an error flag; the robot
then stops on its own and nothing moves again until ``recover()``. The gripper runs on a worker
thread so commands return at once. franky is imported lazily (extra ``franka``); franky and
pylibfranka cannot share a process, so nothing here imports pylibfranka.

Franka's limits (``robot_servers.control.franka_limits``): franky's per-tick torque step is capped at
the arm's 1000 Nm/s, so the stream sent is never discontinuous; the measured joint and end-effector
speeds are judged as the arm's reflexes judge them (monitor thread and every state read), so a
rehearsal on franky-sim, which enforces no limits, stops with the same error names a real arm reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from typing import Any, Callable, Literal

import numpy as np

from robot_servers.backends.base import Backend, ImpedanceParams, RobotState
from robot_servers.cameras.specs import camera_errors, open_task_cameras
from robot_servers.control.franka_limits import FRANKA_LIMITS, limits_for, velocity_reflex
from robot_servers.franka import HOME_Q
from robot_servers.limits import validate_gripper, validate_pose

log = logging.getLogger(__name__)

# Joint limits from the Franka datasheets (rad); franky's tracker repels the arm from them.
ARM_JOINT_LIMITS = {arm: limits.joint_position for arm, limits in FRANKA_LIMITS.items()}


@dataclasses.dataclass(frozen=True)
class LibfrankaConfig:
    """Connection and control settings for one arm."""

    hostname: str = "172.16.0.2"  # the arm's FCI address (franky-sim: 127.0.0.1)
    arm: Literal["fr3", "panda"] = "fr3"
    impedance: ImpedanceParams = ImpedanceParams()
    home_q: tuple[float, ...] = HOME_Q
    realtime: bool = False  # True on a PREEMPT_RT robot PC; False on ordinary kernels and the simulator
    joint_reset_dynamics: float = 0.3  # fraction of the arm's velocity/acceleration/jerk limits
    collision_torque: float = 30.0  # Nm, reflex threshold per joint
    collision_force: float = 40.0  # N / Nm, reflex threshold per Cartesian axis
    gripper: bool = True
    gripper_speed: float = 0.1  # m/s
    gripper_force: float = 40.0  # N
    grasp_below: float = 0.01  # m; commands narrower than this grasp (hold on contact) instead of moving
    monitor_hz: float = 50.0
    stale_after: float = 0.5  # s without a new robot state while tracking → fault (a dead link can stall libfranka's loop)
    cameras: tuple[str, ...] = ()  # camera specs, see robot_servers.cameras.specs (served by the robot server)
    task_cameras: tuple = ()  # the task's CameraSpecs: crops and sizes by name (devices too when `cameras` is empty)

    def __post_init__(self):
        if self.arm not in ARM_JOINT_LIMITS:
            raise ValueError(f"LibfrankaConfig.arm: expected one of {sorted(ARM_JOINT_LIMITS)}, got {self.arm!r}")
        if len(self.home_q) != 7 or not np.all(np.isfinite(self.home_q)):
            raise ValueError("LibfrankaConfig.home_q: expected 7 finite joint angles")
        if not 0.0 < self.joint_reset_dynamics <= 1.0:
            raise ValueError("LibfrankaConfig.joint_reset_dynamics must be in (0, 1]")
        if self.monitor_hz <= 0:
            raise ValueError("LibfrankaConfig.monitor_hz must be positive")
        self.impedance.validate()


# libfranka raises the connecting thread to SCHED_FIFO 99 wherever it may (as root), even when told to ignore
# the kernel's real-time abilities, and every thread or process started from that thread afterwards inherits
# it: the server's HTTP and camera threads, a simulator, an actor. The backend keeps the caller's policy and
# gives libfranka's only to the control threads franky starts for its motions.
def _scheduling_policy() -> tuple:
    return os.sched_getscheduler(0), os.sched_getparam(0)


def _set_scheduling_policy(policy: tuple) -> None:
    if _scheduling_policy() != policy:
        os.sched_setscheduler(0, *policy)


@contextlib.contextmanager
def _starting_threads_with(policy: tuple):
    """Threads started inside inherit ``policy``; the calling thread keeps its own."""
    before = _scheduling_policy()
    _set_scheduling_policy(policy)
    try:
        yield
    finally:
        _set_scheduling_policy(before)


def reset_joints(config: LibfrankaConfig, q) -> np.ndarray:
    """The joint reset's goal: ``q``, or the configured home when None; ValueError where the arm cannot go."""
    target = np.asarray(config.home_q if q is None else q, dtype=np.float64)
    if target.shape != (7,) or not np.all(np.isfinite(target)):
        raise ValueError(f"q: expected 7 finite joint angles, got {np.asarray(q).tolist()}")
    low, high = ARM_JOINT_LIMITS[config.arm]
    if np.any(target < low) or np.any(target > high):
        raise ValueError(f"q: outside the {config.arm} joint limits")
    return target


def _plain_law(params: ImpedanceParams) -> ImpedanceParams:
    """``params`` validated, or ValueError where they need what franky's law lacks (naming the backend that has it)."""
    try:
        return params.validate().require_plain_law("franky's CartesianImpedanceTracker")
    except ValueError as err:
        raise ValueError(f"{err} (the libfranka-torque backend runs the full law)") from None


def _import_franky():
    try:
        import franky
    except ImportError as exc:
        raise ImportError(
            "LibfrankaBackend needs franky: pip install 'serl-suite[franka]' (franky-control)"
        ) from exc
    return franky


def active_errors(errors: Any) -> list[str]:
    """Names of the flags set in a libfranka ``Errors`` object."""
    names = [n for n in dir(type(errors)) if not n.startswith("_") and isinstance(getattr(type(errors), n), property)]
    return [n for n in names if bool(getattr(errors, n))]


class GripperWorker:
    """Runs blocking gripper commands on a thread; only the newest pending command is kept.

    ``gripper`` is franky's or pylibfranka's ``Gripper`` (the same ``move`` and ``grasp``); ``read_width``
    reads its finger width in metres."""

    def __init__(self, gripper, config: LibfrankaConfig, read_width: Callable[[], float]):
        self._gripper = gripper
        self._read_width = read_width
        self._config = config
        self._pending: float | None = None
        self._cond = threading.Condition()
        self._closed = False
        self.width = float(read_width())
        self.error: str | None = None
        self.busy = False
        self._thread = threading.Thread(target=self._run, name="franky-gripper", daemon=True)
        self._thread.start()

    def command(self, width: float) -> None:
        with self._cond:
            self._pending = width
            self._cond.notify()

    def refresh_width(self) -> None:
        if not self.busy:
            self.width = float(self._read_width())

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                width, self._pending = self._pending, None
                self.busy = True
            try:
                if width < self._config.grasp_below:
                    # epsilon covers the whole stroke: stopping on an object of any size counts as a grasp
                    self._gripper.grasp(width, self._config.gripper_speed, self._config.gripper_force, 0.08, 0.08)
                else:
                    self._gripper.move(width, self._config.gripper_speed)
                self.error = None
            except Exception as exc:  # franky raises GripperException / CommandException
                self.error = f"gripper: {exc}"
                log.warning("gripper command failed: %s", exc)
            finally:
                self.busy = False
                try:
                    self.width = float(self._read_width())
                except Exception:
                    pass

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5.0)


class LibfrankaBackend(Backend):
    """Cartesian impedance tracking of the latest target on a real (or franky-sim) Franka arm."""

    name = "libfranka"

    def __init__(self, config: LibfrankaConfig = LibfrankaConfig(), **overrides):
        if overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config
        self._franky = _import_franky()
        self._lock = threading.RLock()
        self._impedance = _plain_law(config.impedance)
        self.limits = limits_for(config.arm)
        self._errors: list[str] = []
        self._mode = "idle"
        self._tracker = None
        self._target = None
        self._closed = False
        self._robot = None
        self._gripper: GripperWorker | None = None
        self._last_state: RobotState | None = None
        self._last_robot_time: tuple[float, float] | None = None  # (robot time, wall time it last changed)
        self._cameras: dict = {}
        self._connect()
        self._cameras = open_task_cameras(config.cameras, config.task_cameras)
        self._start_tracker()
        self._stop_monitor = threading.Event()
        self._monitor = threading.Thread(target=self._monitor_loop, name="franky-monitor", daemon=True)
        self._monitor.start()

    # -- connection and controller lifecycle ----------------------------------------------

    def _connect(self) -> None:
        franky, config = self._franky, self.config
        realtime = franky.RealtimeConfig.Enforce if config.realtime else franky.RealtimeConfig.Ignore
        before = _scheduling_policy()
        try:
            self._robot = franky.Robot(config.hostname, realtime_config=realtime)
            self._control_policy = _scheduling_policy()  # libfranka's choice: SCHED_FIFO 99 where it may
        finally:
            _set_scheduling_policy(before)
        self._robot.relative_dynamics_factor = config.joint_reset_dynamics
        self._robot.recover_from_errors()
        self._robot.set_collision_behavior([config.collision_torque] * 7, [config.collision_force] * 6)
        if config.gripper:
            if self._gripper is not None:
                self._gripper.close()
            gripper = franky.Gripper(config.hostname)
            self._gripper = GripperWorker(gripper, config, lambda: gripper.width)

    def _gains(self, params: ImpedanceParams):
        stiffness = np.concatenate([params.translational_stiffness, params.rotational_stiffness])
        damping = np.concatenate(params.damping())
        return self._franky.CartesianImpedanceGains.diagonal(stiffness, damping)

    def _start_tracker(self) -> None:
        franky, p = self._franky, self._impedance
        low, high = ARM_JOINT_LIMITS[self.config.arm]
        posture_stiffness = np.full(7, p.nullspace_stiffness)
        posture_stiffness[0] = p.joint1_nullspace_stiffness
        q = np.asarray(self._robot.current_joint_positions, dtype=np.float64)
        with _starting_threads_with(self._control_policy):  # franky's 1 kHz loop thread starts here
            self._tracker = franky.CartesianImpedanceTracker(
                self._robot,
                gains=self._gains(p),
                translational_error_clip=np.asarray(p.translational_clip, dtype=np.float64),
                rotational_error_clip=np.asarray(p.rotational_clip, dtype=np.float64),
                posture_task=franky.PostureTask(q, posture_stiffness),
                max_delta_tau=min(p.torque_rate_limit, self.limits.torque_step(0.001)),  # per 1 ms tick
                lower_joint_limits=np.asarray(low),
                upper_joint_limits=np.asarray(high),
            )
        pose = self._robot.current_pose.end_effector_pose
        self._target = np.concatenate([pose.translation, pose.quaternion])
        self._mode = "impedance"

    def _stop_tracker(self) -> None:
        tracker, self._tracker = self._tracker, None
        self._stop(tracker)

    @staticmethod
    def _stop(tracker) -> None:
        """Ramp the torque down and wait until the arm rests (about 0.5 s)."""
        if tracker is None:
            return
        try:
            tracker.stop()
        except Exception as exc:  # a controller that already faulted re-raises its error here
            log.info("tracker stopped with %s", exc)

    def _monitor_loop(self) -> None:
        period = 1.0 / self.config.monitor_hz
        gripper_every = max(1, int(self.config.monitor_hz / 10))
        tick = 0
        while not self._stop_monitor.wait(period):
            tick += 1
            with self._lock:
                if self._tracker is not None and not self._robot.is_in_control:
                    self._fault(self._controller_exit_reason())
                elif self._tracker is not None:
                    try:
                        s = self._robot.state
                        self._check_fresh(float(s.time.to_sec()))
                        self._check_reflexes(np.asarray(s.dq, dtype=np.float64), self._tcp_velocity(s))
                    except Exception as exc:
                        self._fault(f"state unavailable: {exc}")
            if self._gripper is not None and tick % gripper_every == 0:
                try:
                    self._gripper.refresh_width()
                except Exception as exc:
                    self._gripper.error = f"gripper: {exc}"

    def _check_fresh(self, robot_time: float) -> None:
        """While tracking, the robot's clock must advance; a frozen clock means the link is gone."""
        now = time.monotonic()
        if self._last_robot_time is None or robot_time != self._last_robot_time[0]:
            self._last_robot_time = (robot_time, now)
        elif self._tracker is not None and now - self._last_robot_time[1] > self.config.stale_after:
            self._fault(f"state unavailable: no new robot state for {now - self._last_robot_time[1]:.2f} s")

    def _tcp_velocity(self, s) -> np.ndarray | None:
        try:
            jacobian = np.asarray(self._robot.model.zero_jacobian(self._franky.Frame.EndEffector, s))
        except Exception:
            return None
        return jacobian @ np.asarray(s.dq, dtype=np.float64)

    def _check_reflexes(self, dq: np.ndarray, tcp_vel: np.ndarray | None) -> None:
        """Stop as the arm's reflex would when a measured speed is over Franka's limit (call with the lock)."""
        if self._tracker is None:
            return
        reflex = velocity_reflex(self.limits, dq, tcp_vel)
        if reflex is not None:
            tracker, self._tracker = self._tracker, None
            self._stop(tracker)
            self._fault(reflex)

    def _controller_exit_reason(self) -> str:
        try:
            self._robot.join_motion(0.0)
        except Exception as exc:
            return f"controller stopped: {exc}"
        try:
            errors = active_errors(self._robot.state.last_motion_errors)
        except Exception as exc:
            return f"controller stopped; state unavailable: {exc}"
        return "controller stopped: " + (", ".join(errors) or "no reason reported")

    def _fault(self, reason: str) -> None:
        log.error("libfranka fault: %s", reason)
        self._tracker = None
        self._mode = "hold"
        if reason not in self._errors:
            self._errors.append(reason)

    # -- Backend --------------------------------------------------------------------------

    def jacobian(self) -> np.ndarray:
        """The end effector's zero Jacobian from libfranka's model (base frame, linear rows first)."""
        with self._lock:
            return np.asarray(self._robot.model.zero_jacobian(self._franky.Frame.EndEffector, self._robot.state))

    def state(self) -> RobotState:
        with self._lock:
            try:
                s = self._robot.state
            except Exception as exc:  # connection lost: report it with the last known state
                self._fault(f"state unavailable: {exc}")
                return self._stale_state()
            self._check_fresh(float(s.time.to_sec()))
            dq = np.asarray(s.dq, dtype=np.float64)
            tcp_vel = self._tcp_velocity(s)
            self._check_reflexes(dq, tcp_vel)
            errors = list(self._errors)
            mode = self._mode
            target = self._target.copy()
        pose = np.concatenate([np.asarray(s.O_T_EE.translation), np.asarray(s.O_T_EE.quaternion)])
        q = np.asarray(s.q, dtype=np.float64)
        if tcp_vel is None:
            tcp_vel = np.zeros(6)
        errors += [f"robot: {name}" for name in active_errors(s.current_errors)]
        errors += camera_errors(self._cameras)
        gripper_width = 0.0
        if self._gripper is not None:
            gripper_width = self._gripper.width
            if self._gripper.error:
                errors.append(self._gripper.error)
        state = RobotState(
            tcp_pose=pose,
            tcp_vel=tcp_vel,
            wrench=np.asarray(s.O_F_ext_hat_K, dtype=np.float64),
            q=q,
            dq=dq,
            gripper_width=float(gripper_width),
            target_pose=target,
            controller_mode=mode,
            errors=errors,
            timestamp=float(s.time.to_sec()),
        )
        self._last_state = state
        return state

    def _stale_state(self) -> RobotState:
        if self._last_state is None:
            raise RuntimeError(f"libfranka backend has no state yet: {self._errors}")
        return dataclasses.replace(self._last_state, controller_mode=self._mode, errors=list(self._errors),
                                   tcp_vel=np.zeros(6), dq=np.zeros(7))

    def set_target(self, pose, gripper=None) -> None:
        pose = validate_pose(pose, "pose")
        if gripper is not None:
            gripper = validate_gripper(gripper)
        with self._lock:
            if self._tracker is None:
                raise RuntimeError(f"libfranka backend is in mode {self._mode!r} ({self._errors}); call recover()")
            self._tracker.set_target(self._franky.Affine(pose[:3], pose[3:]))
            self._target = pose
        if gripper is not None:
            self.set_gripper(gripper)

    def set_gripper(self, width) -> None:
        width = validate_gripper(width, "width")
        if self._gripper is None:
            raise RuntimeError("libfranka backend was configured without a gripper")
        self._gripper.command(width)

    def impedance(self) -> ImpedanceParams:
        return self._impedance

    def set_impedance(self, params: ImpedanceParams) -> None:
        params = _plain_law(params)
        with self._lock:
            clip_changed = not (
                np.allclose(params.translational_clip, self._impedance.translational_clip)
                and np.allclose(params.rotational_clip, self._impedance.rotational_clip)
                and params.torque_rate_limit == self._impedance.torque_rate_limit
            )
            self._impedance = params
            if self._tracker is None:
                return
            if clip_changed:
                # franky fixes clips and rate limits when the motion starts: restart at the current pose
                target = self._target
                self._stop_tracker()
                self._start_tracker()
                self._tracker.set_target(self._franky.Affine(target[:3], target[3:]))
                self._target = target
            else:
                self._tracker.motion.set_gains(self._gains(params))
                nullspace = self._tracker.motion.get_nullspace_gains()
                stiffness = np.full(7, params.nullspace_stiffness)
                stiffness[0] = params.joint1_nullspace_stiffness
                nullspace.posture_stiffness = stiffness
                self._tracker.motion.set_nullspace_gains(nullspace)

    def home_joints(self) -> np.ndarray:
        return np.array(self.config.home_q, dtype=np.float64)

    def joint_reset(self, q=None, duration: float = 3.0) -> None:
        target = reset_joints(self.config, q)
        allowed = max(duration * 5, 20.0)
        with self._lock:
            if self._errors:
                raise RuntimeError(f"libfranka backend has errors {self._errors}; call recover() first")
            if self._mode == "joint":
                raise RuntimeError("a joint reset is already running")
            tracker, self._tracker = self._tracker, None
            self._mode = "joint"
        try:
            self._stop(tracker)
            # franky plans a time-optimal move within the robot's relative_dynamics_factor. The lock
            # is not held while the arm moves, so state and health keep answering.
            with _starting_threads_with(self._control_policy):
                self._robot.move(self._franky.JointMotion(target), asynchronous=True)
            if not self._robot.join_motion(allowed):
                self._robot.stop()
                raise RuntimeError(f"joint reset did not finish within {allowed:.0f} s")
        except Exception as exc:
            with self._lock:
                self._fault(f"joint reset failed: {exc}")
            raise
        with self._lock:
            self._start_tracker()

    def recover(self) -> None:
        with self._lock:
            self._stop_tracker()
            try:
                self._robot.recover_from_errors()
            except Exception as exc:  # the FCI connection is gone (network blip, robot rebooted): reconnect
                log.warning("recover_from_errors failed (%s); reconnecting", exc)
                self._connect()
            self._errors.clear()
            self._last_robot_time = None
            if self._gripper is not None:
                self._gripper.error = None
            self._start_tracker()

    def hold(self) -> None:
        with self._lock:
            if self._tracker is None:
                return  # after a fault the arm is already stopped by the robot itself
            pose = self._robot.current_pose.end_effector_pose
            self._tracker.set_target(pose)
            self._target = np.concatenate([pose.translation, pose.quaternion])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for camera in self._cameras.values():
            camera.close()
        self._stop_monitor.set()
        self._monitor.join(timeout=2.0)
        with self._lock:
            self._stop_tracker()
            self._mode = "idle"
        if self._gripper is not None:
            self._gripper.close()
