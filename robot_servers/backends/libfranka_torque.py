"""``TorqueLoopBackend``: a Franka arm over FCI with the suite's own Cartesian impedance law (SERL's, the
integral term and asymmetric error clip included) in a 1 kHz torque loop, through pylibfranka.

franky's tracker (``LibfrankaBackend``) has symmetric clips and no integral term; this backend runs
``robot_servers.control.impedance`` itself, the law the twin runs, so SERL's gain presets mean the same
thing on the real arm. The loop lives in its own process: pylibfranka and franky cannot share a
process, and the server's Python threads (HTTP, cameras) must not take the GIL from a loop that has
1 ms per tick. The process talks to the backend over a pipe (commands, faults; local only) and
publishes each tick's state in shared memory.

On the real arm the loop needs a PREEMPT_RT kernel (``realtime=True``): libfranka stops a controller
that misses too many ticks (``communication_constraints_violation``). ``state().warnings`` reports when
the robot's measured command success rate drops under 95 %. Joint resets use the twin's minimum-jerk
joint servo in the same torque loop. Velocity reflexes are judged every tick as the arm judges them.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import signal
import threading
import time
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from robot_servers.backends.base import Backend, ImpedanceParams, RobotState
from robot_servers.backends.libfranka import GripperWorker, LibfrankaConfig, active_errors, reset_joints
from robot_servers.cameras.specs import camera_errors, open_task_cameras
from robot_servers.control.franka_limits import limits_for, velocity_reflex
from robot_servers.control.impedance import ImpedanceController, matrix_to_quat_xyzw
from robot_servers.control.joint_servo import JointMove
from robot_servers.limits import validate_gripper, validate_pose

log = logging.getLogger(__name__)

# Shared state block (float64): sequence counter (odd while the loop writes), then the fields.
_FIELDS = {"time": 1, "q": 7, "dq": 7, "tcp_pose": 7, "tcp_vel": 6, "wrench": 6, "tau": 7,
           "jacobian": 42, "success_rate": 1}
_SLICES: dict[str, slice] = {}
_offset = 1
for _name, _size in _FIELDS.items():
    _SLICES[_name] = slice(_offset, _offset + _size)
    _offset += _size
_BLOCK = _offset
SUCCESS_RATE_WARNING = 0.95
STOP_RAMP_TICKS = 200  # torque ramp to zero when the loop stops (within Franka's torque rate at any law torque)


class _Published:
    """The loop's side of the shared block: a seqlock writer."""

    def __init__(self, block: np.ndarray):
        self.block = block

    def write(self, **fields: np.ndarray | float) -> None:
        self.block[0] += 1.0
        for name, value in fields.items():
            self.block[_SLICES[name]] = value
        self.block[0] += 1.0


def _read_block(block: np.ndarray) -> np.ndarray | None:
    """A consistent copy of the block, or None when the loop never wrote one."""
    for _ in range(1000):
        before = block[0]
        copy = block.copy()
        if before == block[0] and before % 2 == 0:
            return copy if before > 0 else None
    return None


def _pose_of(transform: np.ndarray) -> np.ndarray:
    """xyz + quat xyzw (w ≥ 0) of a column-major 4×4 homogeneous transform."""
    matrix = np.asarray(transform, dtype=np.float64).reshape(4, 4, order="F")
    quat = matrix_to_quat_xyzw(np.ascontiguousarray(matrix[:3, :3]).reshape(-1), np.empty(4))
    return np.concatenate([matrix[:3, 3], -quat if quat[3] < 0 else quat])


def _loop_main(conn, shm_name: str, config: LibfrankaConfig) -> None:
    """The torque loop process: connect, then run the law until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the backend, which stops the loop with a torque ramp
    shm = SharedMemory(shm_name)
    try:
        _TorqueLoop(conn, np.ndarray((_BLOCK,), dtype=np.float64, buffer=shm.buf), config).run()
    finally:
        shm.close()


class _TorqueLoop:
    def __init__(self, conn, block: np.ndarray, config: LibfrankaConfig):
        self.conn, self.config = conn, config
        self.published = _Published(block)
        self.limits = limits_for(config.arm)
        self.controller = ImpedanceController(tau_limit=np.asarray(self.limits.torque))
        self._set_params(config.impedance)
        self._warm_up()
        self.target = np.zeros(7)
        self.joint_goal: tuple[np.ndarray, float] | None = None  # a joint reset asked for: (q, duration)
        self.mode = "hold"
        self.stopping = False
        self.announce: tuple | None = None  # a message to send once the next state is published

    def _set_params(self, params: ImpedanceParams) -> None:
        # the law's own torque rate limit, within what the arm accepts per 1 ms tick
        rate = min(params.torque_rate_limit, self.limits.torque_step(0.001))
        self.controller.set_params(dataclasses.replace(params, torque_rate_limit=rate))

    def _warm_up(self) -> None:
        """Compile the law before the first tick (numba), then forget the call."""
        eye = np.eye(3).reshape(-1)
        self.controller.compute(np.zeros((3, 7)), np.zeros((3, 7)), np.zeros(3), eye, np.zeros(7), np.zeros(7),
                                np.zeros(7), np.zeros(7), np.array([0, 0, 0, 0, 0, 0, 1.0]), ctrl=np.zeros(7))
        self.controller.reset(np.zeros(7))

    def run(self) -> None:
        import pylibfranka

        self.fl = pylibfranka
        try:
            realtime = pylibfranka.RealtimeConfig.kEnforce if self.config.realtime else pylibfranka.RealtimeConfig.kIgnore
            self.robot = pylibfranka.Robot(self.config.hostname, realtime)
            torque, force = self.config.collision_torque, self.config.collision_force
            self.robot.set_collision_behavior([torque] * 7, [torque] * 7, [force] * 6, [force] * 6)
            self.model = self.robot.load_model()
        except Exception as exc:
            self.conn.send(("ready", f"connect to {self.config.hostname}: {exc}"))
            return
        self._publish(self.robot.read_once())
        self.conn.send(("ready", None))
        self.mode = "impedance"
        while not self.stopping:
            if self.mode == "hold":
                self._idle()
            elif self.joint_goal is not None:
                self._joint_motion()
            else:
                self._control()

    # -- the 1 kHz loop -----------------------------------------------------------------------

    def _control(self) -> None:
        """Torque control until a stop, a reflex or a controller exception."""
        try:
            control = self.robot.start_torque_control()
            state, _ = control.readOnce()
        except Exception as exc:
            self._fault(f"controller did not start: {exc}")
            return
        self.controller.reset(np.asarray(state.q, dtype=np.float64))
        self.target = _pose_of(state.O_T_EE)
        self.mode = "impedance"
        try:
            while True:
                tau, tcp_vel = self._tick(state)
                if self.announce is not None:  # the state now shows the pose held after a joint reset
                    self.conn.send(self.announce)
                    self.announce = None
                self._commands()
                if self.stopping or self.mode == "hold" or self.joint_goal is not None:
                    self._ramp_down(control)
                    return
                reflex = velocity_reflex(self.limits, state.dq, tcp_vel)
                if reflex is not None:
                    self._ramp_down(control)
                    self._fault(reflex)
                    return
                control.writeOnce(self.fl.Torques(tau.tolist()))
                state, _ = control.readOnce()
        except Exception as exc:  # libfranka's ControlException: a reflex or a lost link stopped the controller
            self._fault(self._exit_reason(exc))

    def _tick(self, state) -> tuple[np.ndarray, np.ndarray]:
        q, dq = np.asarray(state.q, dtype=np.float64), np.asarray(state.dq, dtype=np.float64)
        jacobian = np.asarray(self.model.zero_jacobian(state), dtype=np.float64).reshape(6, 7, order="F")
        coriolis = np.asarray(self.model.coriolis(state), dtype=np.float64)
        transform = np.asarray(state.O_T_EE, dtype=np.float64).reshape(4, 4, order="F")
        tau = self.controller.compute(jacobian[:3], jacobian[3:], np.ascontiguousarray(transform[:3, 3]),
                                      np.ascontiguousarray(transform[:3, :3]).reshape(-1), q, dq, coriolis,
                                      np.zeros(7), self.target)
        tcp_vel = jacobian @ dq
        self._publish(state, tcp_vel=tcp_vel, jacobian=jacobian)
        return tau, tcp_vel

    def _joint_motion(self) -> None:
        """A joint reset: the arm's own joint controller follows a minimum-jerk move within its limits (as
        franky's joint motions do); then the law takes over where it ends."""
        goal, duration = self.joint_goal
        self.joint_goal = None
        self.mode = "joint"
        try:
            control = self.robot.start_joint_position_control(self.fl.ControllerMode.JointImpedance)
            state, period = control.readOnce()
            move = JointMove.plan(self.limits, state.q, goal, 0.0, duration)
            self.conn.send(("joint_planned", move.duration))
            elapsed = 0.0
            while True:
                self._publish(state)
                self._commands()
                elapsed += period.to_sec()
                command = self.fl.JointPositions(move.reference(elapsed).tolist())
                reflex = velocity_reflex(self.limits, state.dq)
                command.motion_finished = bool(elapsed >= move.duration or self.stopping or reflex or self.mode == "hold")
                control.writeOnce(command)
                if command.motion_finished:
                    break
                state, period = control.readOnce()
        except Exception as exc:
            reason = self._exit_reason(exc)
        else:
            reason = reflex or ("stopped" if self.stopping or self.mode == "hold" else None)
        if reason is not None:
            self.conn.send(("joint_done", reason))
            self._fault(reason)
            return
        self.mode = "impedance"
        self.announce = ("joint_done", None)

    def _ramp_down(self, control) -> None:
        """Bring the commanded torque to zero within the torque rate limit, then end the motion."""
        tau = self.controller.tau.copy()
        for k in range(STOP_RAMP_TICKS, 0, -1):
            command = self.fl.Torques((tau * (k - 1) / STOP_RAMP_TICKS).tolist())
            command.motion_finished = k == 1
            control.writeOnce(command)
            if k > 1:
                state, _ = control.readOnce()
                self._publish(state)
        self.controller.tau[:] = 0.0

    # -- outside control: faults, commands ----------------------------------------------------

    def _idle(self) -> None:
        """No controller: keep publishing the state and wait for ``recover`` (or ``stop``)."""
        try:
            self._publish(self.robot.read_once())
        except Exception as exc:
            log.debug("state read failed: %s", exc)
        if self.conn.poll(0.01):
            self._commands()

    def _commands(self) -> None:
        while self.conn.poll():
            try:
                kind, value = self.conn.recv()
            except (EOFError, OSError):  # the backend's process is gone: stop as if told to
                self.stopping = True
                return
            if kind == "target":
                self.target = np.asarray(value, dtype=np.float64)
            elif kind == "params":
                self._set_params(ImpedanceParams(**value).validate())
            elif kind == "joint":
                self.joint_goal = (np.asarray(value[0], dtype=np.float64), float(value[1]))
            elif kind == "halt":
                self.joint_goal = None
                self.mode = "hold"
            elif kind == "recover":
                self._recover()
            elif kind == "stop":
                self.stopping = True

    def _recover(self) -> None:
        if self.mode != "hold":  # still controlling (the backend saw a fault the loop did not)
            self.conn.send(("recovered", None))
            return
        try:
            self.robot.automatic_error_recovery()
        except Exception as exc:  # the link is gone: end here, the backend reconnects with a new loop
            self.conn.send(("recovered", f"error recovery failed: {exc}"))
            self.stopping = True
            return
        self.mode = "impedance"
        self.conn.send(("recovered", None))

    def _fault(self, reason: str) -> None:
        log.error("torque loop: %s", reason)
        self.mode = "hold"
        self.joint_goal = None
        self.conn.send(("fault", reason))

    def _exit_reason(self, exc: Exception) -> str:
        try:
            errors = active_errors(self.robot.read_once().last_motion_errors)
        except Exception:
            errors = []
        return "controller stopped: " + (", ".join(errors) or str(exc))

    def _publish(self, state, tcp_vel=None, jacobian=None) -> None:
        if jacobian is None:
            jacobian = np.asarray(self.model.zero_jacobian(state), dtype=np.float64).reshape(6, 7, order="F")
            tcp_vel = jacobian @ np.asarray(state.dq, dtype=np.float64)
        self.published.write(
            time=float(state.time.to_sec()), q=state.q, dq=state.dq, tcp_pose=_pose_of(state.O_T_EE),
            tcp_vel=tcp_vel, wrench=state.O_F_ext_hat_K, tau=self.controller.tau, jacobian=jacobian.reshape(-1),
            success_rate=float(state.control_command_success_rate),
        )


def _gripper_main(conn, config: LibfrankaConfig) -> None:
    """The gripper process: pylibfranka's gripper calls hold the GIL for a whole move, so they run apart from
    both the loop and the server. Reports (width, error) every 0.1 s and after each command."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import pylibfranka

    try:
        gripper = pylibfranka.Gripper(config.hostname)
        worker = GripperWorker(gripper, config, lambda: gripper.read_once().width)
    except Exception as exc:
        conn.send((None, f"gripper: {exc}"))
        return
    try:
        while True:
            if conn.poll(0.1):
                width = conn.recv()
                if width is None:
                    return
                worker.command(width)
            else:
                worker.refresh_width()
            conn.send((worker.width, worker.error))
    except (EOFError, OSError):
        return
    finally:
        worker.close()


class GripperProcess:
    """``GripperWorker``'s interface (``command``, ``width``, ``error``, ``close``) over a gripper process."""

    def __init__(self, config: LibfrankaConfig):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_gripper_main, args=(child, config), name="franka-gripper",
                                        daemon=True)
        self._process.start()
        child.close()
        self.width, self.error = 0.0, None
        if not self._conn.poll(30.0):
            self.close()
            raise ConnectionError("libfranka-torque: the gripper process did not report within 30 s")
        self._receive()
        if self.error is not None:
            self._process.join(1.0)
            if not self._process.is_alive():  # it could not connect
                raise ConnectionError(f"libfranka-torque: {self.error}")
        self._thread = threading.Thread(target=self._listen, name="franka-gripper-state", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        width, self.error = self._conn.recv()
        if width is not None:
            self.width = float(width)

    def _listen(self) -> None:
        try:
            while True:
                self._receive()
        except (EOFError, OSError):
            if self._process.exitcode not in (None, 0):
                self.error = f"gripper process exited (code {self._process.exitcode})"

    def command(self, width: float) -> None:
        try:
            self._conn.send(float(width))
        except OSError as exc:
            raise RuntimeError(f"the gripper process is gone: {exc}") from exc

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._conn.send(None)
            except OSError:
                pass
            self._process.join(timeout=5.0)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=2.0)
        self._conn.close()


class TorqueLoopBackend(Backend):
    """Our impedance law on a real (or franky-sim) Franka arm, in a 1 kHz pylibfranka torque loop process."""

    name = "libfranka-torque"

    def __init__(self, config: LibfrankaConfig = LibfrankaConfig(), **overrides):
        if overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config
        self._impedance = config.impedance.validate()
        self.limits = limits_for(config.arm)
        self._lock = threading.RLock()
        self._send_lock = threading.Lock()
        self._errors: list[str] = []
        self._mode = "idle"
        self._closed = False
        self._replacing = False  # True while recover() may replace the loop process
        self._events: dict[str, threading.Event] = {}
        self._replies: dict[str, object] = {}
        self._cameras: dict = {}
        self._gripper: GripperProcess | None = None
        self._target = np.zeros(7)  # the pose the law tracks, as last commanded
        self._last_state: RobotState | None = None
        self._last_fresh: tuple[float, float] | None = None  # (robot time, wall time it last changed)
        self._shm = SharedMemory(create=True, size=_BLOCK * 8)
        self._block = np.ndarray((_BLOCK,), dtype=np.float64, buffer=self._shm.buf)
        self._block[:] = 0.0
        try:
            self._start_loop()
            if config.gripper:
                self._gripper = GripperProcess(config)
            self._cameras = open_task_cameras(config.cameras, config.task_cameras)
        except BaseException:
            self.close()
            raise

    # -- the loop process ---------------------------------------------------------------------

    def _start_loop(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_loop_main, args=(child, self._shm.name, self.config),
                                        name="franka-torque-loop", daemon=True)
        self._process.start()
        child.close()
        self._expect("ready")
        self._listener = threading.Thread(target=self._listen, args=(self._conn, self._process),
                                          name="torque-loop-events", daemon=True)
        self._listener.start()
        failure = self._wait("ready", 60.0)
        if failure is not None:
            raise ConnectionError(f"libfranka-torque: {failure}")
        self._mode = "impedance"
        self._last_fresh = None
        self._hold_here()

    def _hold_here(self) -> None:
        """What the loop holds after it (re)starts its law: the measured pose."""
        self._target = self._snapshot()[_SLICES["tcp_pose"]].copy()

    def _expect(self, kind: str) -> None:
        self._events[kind] = threading.Event()
        self._replies.pop(kind, None)

    def _wait(self, kind: str, timeout: float):
        if not self._events[kind].wait(timeout):
            return f"no {kind!r} from the torque loop within {timeout:.0f} s"
        return self._replies.get(kind)

    def _reply(self, kind: str, value) -> None:
        self._replies[kind] = value
        if kind in self._events:
            self._events[kind].set()

    def _listen(self, conn, process) -> None:
        """Events from one loop process; its end is a fault unless the backend ended or replaces it."""
        while True:
            try:
                kind, value = conn.recv()
            except (EOFError, OSError):
                break
            if kind == "ready":
                self._reply("ready", value)
            elif kind == "fault":
                with self._lock:
                    self._fault(value)
            elif kind in ("joint_done", "joint_planned", "recovered"):
                self._reply(kind, value)
        if not (self._closed or self._replacing):
            process.join(timeout=1.0)
            reason = f"torque loop process exited (code {process.exitcode})"
            with self._lock:
                self._fault(reason)
            for kind, event in self._events.items():
                if not event.is_set():
                    self._replies[kind] = reason
                    event.set()

    def _send(self, kind: str, value=None) -> None:
        with self._send_lock:
            try:
                self._conn.send((kind, value))
            except (BrokenPipeError, OSError) as exc:
                raise RuntimeError(f"libfranka-torque: the torque loop is gone ({exc}); call recover()") from exc

    def _fault(self, reason: str) -> None:
        log.error("libfranka-torque fault: %s", reason)
        self._mode = "hold"
        if reason not in self._errors:
            self._errors.append(reason)
        try:  # the loop may still be controlling (a fault seen here first): it ramps down and waits for recover
            self._send("halt")
        except RuntimeError:
            pass

    # -- Backend ------------------------------------------------------------------------------

    def _snapshot(self) -> np.ndarray | None:
        return _read_block(self._block)

    def state(self) -> RobotState:
        block = self._snapshot()
        if block is None:
            raise RuntimeError(f"libfranka-torque backend has no state yet: {self._errors}")
        field = {name: block[s] for name, s in _SLICES.items()}
        robot_time = float(field["time"][0])
        with self._lock:
            self._check_fresh(robot_time)
            errors, mode = list(self._errors), self._mode
        errors += camera_errors(self._cameras)
        warnings = []
        rate = float(field["success_rate"][0])
        if mode == "impedance" and 0.0 < rate < SUCCESS_RATE_WARNING:
            warnings.append(f"torque loop: {100 * rate:.0f} % of commands reach the arm on time")
        gripper_width = 0.0
        if self._gripper is not None:
            gripper_width = self._gripper.width
            if self._gripper.error:
                errors.append(self._gripper.error)
        state = RobotState(
            tcp_pose=field["tcp_pose"].copy(), tcp_vel=field["tcp_vel"].copy(), wrench=field["wrench"].copy(),
            q=field["q"].copy(), dq=field["dq"].copy(), gripper_width=float(gripper_width),
            target_pose=self._target.copy(), controller_mode=mode, errors=errors, timestamp=robot_time,
            warnings=warnings,
        )
        self._last_state = state
        return state

    def _check_fresh(self, robot_time: float) -> None:
        """While controlling, the robot's clock must advance; a frozen one means the loop or the link is gone."""
        now = time.monotonic()
        if self._last_fresh is None or robot_time != self._last_fresh[0]:
            self._last_fresh = (robot_time, now)
        elif self._mode in ("impedance", "joint") and now - self._last_fresh[1] > self.config.stale_after:
            self._fault(f"state unavailable: no new robot state for {now - self._last_fresh[1]:.2f} s")

    def jacobian(self) -> np.ndarray:
        block = self._snapshot()
        if block is None:
            raise RuntimeError("libfranka-torque backend has no state yet")
        return block[_SLICES["jacobian"]].reshape(6, 7).copy()

    def set_target(self, pose, gripper=None) -> None:
        pose = validate_pose(pose, "pose")
        if gripper is not None:
            gripper = validate_gripper(gripper)
        with self._lock:
            if self._mode != "impedance":
                raise RuntimeError(f"libfranka-torque backend is in mode {self._mode!r} ({self._errors}); "
                                   "call recover()")
            self._send("target", pose.tolist())
            self._target = pose
        if gripper is not None:
            self.set_gripper(gripper)

    def set_gripper(self, width) -> None:
        width = validate_gripper(width, "width")
        if self._gripper is None:
            raise RuntimeError("libfranka-torque backend was configured without a gripper")
        self._gripper.command(width)

    def impedance(self) -> ImpedanceParams:
        return self._impedance

    def set_impedance(self, params: ImpedanceParams) -> None:
        params = params.validate()
        with self._lock:
            self._send("params", params.to_dict())
            self._impedance = params

    def home_joints(self) -> np.ndarray:
        return np.array(self.config.home_q, dtype=np.float64)

    def joint_reset(self, q=None, duration: float = 3.0) -> None:
        target = reset_joints(self.config, q)
        with self._lock:
            if self._errors:
                raise RuntimeError(f"libfranka-torque backend has errors {self._errors}; call recover() first")
            if self._mode == "joint":
                raise RuntimeError("a joint reset is already running")
            self._expect("joint_planned")
            self._expect("joint_done")
            self._send("joint", (target.tolist(), float(duration)))
            self._mode = "joint"
        planned = self._wait("joint_planned", 10.0)
        allowed = (planned if isinstance(planned, float) else duration) + 10.0
        outcome = self._wait("joint_done", allowed)
        with self._lock:
            if self._mode == "joint":
                self._mode = "impedance" if outcome is None else "hold"
            if outcome is None:
                self._hold_here()
        if outcome is not None:
            with self._lock:
                self._fault(f"joint reset failed: {outcome}")
            raise RuntimeError(f"joint reset failed: {outcome}")

    def recover(self) -> None:
        with self._lock:
            self._replacing = True  # a loop that ends from here on is replaced, not a new fault
            try:
                if self._process.is_alive():
                    self._expect("recovered")
                    self._send("recover")
                    outcome = self._wait("recovered", 10.0)
                    if outcome is not None:  # a lost link, or a loop stuck on it: a new loop, a new connection
                        log.warning("%s; reconnecting", outcome)
                        self._end_loop()
                if not self._process.is_alive():
                    self._conn.close()
                    self._listener.join(timeout=2.0)
                    self._start_loop()
            finally:
                self._replacing = False
            self._errors.clear()
            self._mode = "impedance"
            self._last_fresh = None
            self._hold_here()
            if self._gripper is not None:
                self._gripper.error = None

    def _end_loop(self) -> None:
        """End a loop process that gave up on its link or no longer answers (stuck in a call on a dead link)."""
        self._process.join(timeout=5.0)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=5.0)

    def hold(self) -> None:
        with self._lock:
            if self._mode == "impedance":
                self._hold_here()
                self._send("target", self._target.tolist())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for camera in self._cameras.values():
            camera.close()
        process = getattr(self, "_process", None)
        if process is not None:
            if process.is_alive():
                try:
                    self._conn.send(("stop", None))
                except OSError:
                    pass
            process.join(timeout=5.0)
            if process.is_alive():
                process.kill()
                process.join(timeout=2.0)
            self._conn.close()
        self._mode = "idle"
        if self._gripper is not None:
            self._gripper.close()
        self._shm.close()
        self._shm.unlink()
