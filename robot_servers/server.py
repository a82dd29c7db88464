"""The robot server: a FastAPI app in front of one ``Backend`` and its cameras.

Every command is validated (pydantic: finite numbers, exact lengths, unit quaternions, gripper and
impedance ranges) and checked against the task's safety box before it reaches the backend; a
rejected command changes nothing. The measured pose is checked too: leaving the box (beyond a
tolerance) holds the arm and latches a safety stop until ``POST /recover``. A watchdog holds the
arm when no command arrives within ``watchdog_timeout``. Images travel as msgpack (raw bytes with
shape, dtype and timestamp per camera), never pickle. An optional bearer token guards every path.

Endpoints (JSON bodies; 422 names the bad field, 409 while a safety stop is active):

    GET  /health            ok, errors, watchdog and safety status, cameras, session id
    GET  /state             RobotState (server-side errors such as the safety stop appended)
    POST /target            {"pose": [x, y, z, qx, qy, qz, qw], "gripper": width?}
    POST /gripper           {"width": 0..0.08}
    POST /impedance         ImpedanceParams fields
    POST /joint_reset       {"q": [7]?, "duration": s}   (blocking)
    POST /recover           clear backend errors and the safety stop
    GET  /images            all cameras' newest frames (?camera=NAME to pick)   [msgpack]
    GET  /observe           state + all frames in one response                   [msgpack]
    POST /step              {"pose"?, "gripper"?, "advance"? (lockstep) | "wait"? (real time), "images": bool,
                             "scene": bool} → observe                                        [msgpack]
    POST /sim/advance, GET /sim/scene, POST /sim/reset_scene, POST /sim/reset_robot   (twin only)

Every response carries ``x-robot-session``; a request that sends a stale one gets 409 (server restarted).

Wire format of binary responses (``application/msgpack``)::

    /images  -> {camera: {"shape": [H, W, 3], "dtype": "uint8", "timestamp": t, "data": bytes}}
    /observe -> {"state": <RobotState dict>, "images": <as /images>}
    /step    -> {"state": ..., "images": ..., "target": [7] | None, "clipped": bool, "scene": {name: [7]} | None}
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import hmac
import json
import logging
import socket
import sys
import threading
import time
import uuid
from typing import Annotated, Any, Literal, Mapping, Optional

import msgpack
import numpy as np
from fastapi import Body, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, field_validator

from robot_servers.backends.base import (
    DAMPING_LIMITS,
    MAX_GRIPPER_WIDTH,
    STIFFNESS_LIMITS,
    Backend,
    ImpedanceParams,
    RobotState,
)
from robot_servers.cameras.base import Camera
from robot_servers.cameras.threaded import ThreadedCamera
from robot_servers.control.pose import normalize_quat
from robot_servers.control.safety import SafetyBox

log = logging.getLogger("robot_servers.server")

MSGPACK_MEDIA_TYPE = "application/msgpack"
SESSION_HEADER = "x-robot-session"
QUAT_NORM_TOLERANCE = 0.1  # |‖q‖ − 1| up to this is normalised, beyond it rejected
MAX_JOINT_RESET_S = 30.0
MAX_ADVANCE_S = 10.0


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Behaviour of the app (not of the process: host/port live in ``ServeConfig``)."""

    safety_box: SafetyBox | None = None
    on_violation: Literal["clip", "reject"] = "clip"  # what to do with a target outside the box
    measured_tolerance: float = 0.01  # m / rad the measured pose may exceed the box before a stop
    watchdog_timeout: float | None = 0.5  # s without a command → hold; None disables
    monitor_hz: float = 100.0  # rate of the watchdog / measured-pose checks (real-time backends)
    token: str | None = None  # bearer token required on every path when set

    def __post_init__(self):
        if self.on_violation not in ("clip", "reject"):
            raise ValueError(f"ServerConfig.on_violation must be 'clip' or 'reject', got {self.on_violation!r}")
        if self.watchdog_timeout is not None and not self.watchdog_timeout > 0:
            raise ValueError("ServerConfig.watchdog_timeout must be positive or None")
        if not self.measured_tolerance >= 0:
            raise ValueError("ServerConfig.measured_tolerance must be >= 0")
        if not self.monitor_hz > 0:
            raise ValueError("ServerConfig.monitor_hz must be positive")
        if self.token is not None and not self.token:
            raise ValueError("ServerConfig.token must be a non-empty string or None")


# ---------------------------------------------------------------- request bodies

Finite = Annotated[float, Field(allow_inf_nan=False)]
Width = Annotated[float, Field(ge=0.0, le=MAX_GRIPPER_WIDTH, allow_inf_nan=False, description="m, 0 closed .. 0.08 open")]
Pose7 = Annotated[list[Finite], Field(min_length=7, max_length=7, description="x, y, z (m), qx, qy, qz, qw; base frame")]
Joints7 = Annotated[list[Annotated[float, Field(ge=-2 * np.pi, le=2 * np.pi, allow_inf_nan=False)]],
                    Field(min_length=7, max_length=7, description="joint positions, rad")]


def _bounded_vec3(low: float, high: float, unit: str):
    item = Annotated[float, Field(ge=low, le=high, allow_inf_nan=False)]
    return Annotated[list[item], Field(min_length=3, max_length=3, description=f"{unit}, each in [{low}, {high}]")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _unit_quaternion_pose(pose: list[float]) -> list[float]:
    with np.errstate(over="ignore"):  # 1e308-sized entries give norm inf, which is rejected below
        norm = float(np.linalg.norm(pose[3:]))
    if abs(norm - 1.0) > QUAT_NORM_TOLERANCE:
        raise ValueError(f"quaternion (xyzw) norm is {norm:.4g}; send a unit quaternion")
    return pose[:3] + normalize_quat(np.asarray(pose[3:])).tolist()


class TargetBody(_Body):
    pose: Pose7
    gripper: Optional[Width] = None

    @field_validator("pose")
    @classmethod
    def _unit_quaternion(cls, pose: list[float]) -> list[float]:
        return _unit_quaternion_pose(pose)


class GripperBody(_Body):
    width: Width


_DEFAULT_IMPEDANCE = ImpedanceParams()


class ImpedanceBody(_Body):
    """Full set of impedance parameters (omitted fields take the defaults of ``ImpedanceParams``)."""

    translational_stiffness: _bounded_vec3(*STIFFNESS_LIMITS["translational"], "N/m") = list(
        _DEFAULT_IMPEDANCE.translational_stiffness)
    rotational_stiffness: _bounded_vec3(*STIFFNESS_LIMITS["rotational"], "Nm/rad") = list(
        _DEFAULT_IMPEDANCE.rotational_stiffness)
    translational_damping: Optional[_bounded_vec3(*DAMPING_LIMITS["translational"], "Ns/m")] = None
    rotational_damping: Optional[_bounded_vec3(*DAMPING_LIMITS["rotational"], "Nms/rad")] = None
    translational_clip: _bounded_vec3(1e-4, 1.0, "m") = list(_DEFAULT_IMPEDANCE.translational_clip)
    rotational_clip: _bounded_vec3(1e-4, float(np.pi), "rad") = list(_DEFAULT_IMPEDANCE.rotational_clip)
    nullspace_stiffness: Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False)] = (
        _DEFAULT_IMPEDANCE.nullspace_stiffness)
    joint1_nullspace_stiffness: Annotated[float, Field(ge=0.0, le=200.0, allow_inf_nan=False)] = (
        _DEFAULT_IMPEDANCE.joint1_nullspace_stiffness)
    torque_rate_limit: Annotated[float, Field(ge=1e-3, le=10.0, allow_inf_nan=False)] = (
        _DEFAULT_IMPEDANCE.torque_rate_limit)

    def to_params(self) -> ImpedanceParams:
        return ImpedanceParams(**self.model_dump()).validate()


class JointResetBody(_Body):
    q: Optional[Joints7] = None  # None: the backend's home configuration
    duration: Annotated[float, Field(gt=0.0, le=MAX_JOINT_RESET_S, allow_inf_nan=False)] = 3.0


class AdvanceBody(_Body):
    seconds: Annotated[float, Field(gt=0.0, le=MAX_ADVANCE_S, allow_inf_nan=False)]


class ResetRobotBody(_Body):
    q: Optional[Joints7] = None  # None: the backend's home configuration


class ResetSceneBody(_Body):
    seed: Optional[Annotated[int, Field(ge=0, le=2**32 - 1)]] = None


class StepBody(_Body):
    """Target (optional), simulated time to advance (lockstep backends only), then observe — one round trip."""

    pose: Optional[Pose7] = None
    gripper: Optional[Width] = None
    advance: Optional[Annotated[float, Field(gt=0.0, le=MAX_ADVANCE_S, allow_inf_nan=False)]] = None
    wait: Optional[Annotated[float, Field(ge=0.0, le=MAX_ADVANCE_S, allow_inf_nan=False)]] = Field(
        None, description="real-time backends: seconds after the command to observe (the env's time to its tick)")
    images: bool = True
    scene: bool = False  # include the ground-truth scene (twin) observed at the same instant

    @field_validator("pose")
    @classmethod
    def _unit_quaternion(cls, pose: list[float] | None) -> list[float] | None:
        return None if pose is None else _unit_quaternion_pose(pose)


# ---------------------------------------------------------------- encoding


def encode_images(frames: Mapping[str, tuple[np.ndarray, float]]) -> dict[str, dict[str, Any]]:
    """msgpack-ready dict of raw frames with shape, dtype and timestamp."""
    out = {}
    for name, (frame, timestamp) in frames.items():
        frame = np.ascontiguousarray(frame)
        out[name] = {"shape": list(frame.shape), "dtype": frame.dtype.str, "timestamp": float(timestamp),
                     "data": frame.tobytes()}
    return out


def decode_images(payload: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[np.ndarray, float]]:
    """Inverse of ``encode_images``; refuses object dtypes and sizes that do not match the shape."""
    out = {}
    for name, item in payload.items():
        dtype = np.dtype(item["dtype"])
        if dtype.hasobject:
            raise ValueError(f"image {name!r}: object dtype refused")
        shape = tuple(int(s) for s in item["shape"])
        data = item["data"]
        if len(data) != int(np.prod(shape)) * dtype.itemsize:
            raise ValueError(f"image {name!r}: {len(data)} bytes do not match shape {shape} and dtype {dtype}")
        out[name] = (np.frombuffer(data, dtype=dtype).reshape(shape).copy(), float(item["timestamp"]))
    return out


SPIN_S = 0.001  # timers and sleeps wake up late under load; the last stretch before a tick is spun


async def _sleep_until(deadline: float) -> None:
    remaining = deadline - time.perf_counter()
    if remaining > SPIN_S:
        await asyncio.sleep(remaining - SPIN_S)
    while time.perf_counter() < deadline:
        pass


def _camera_faults(cameras: Mapping[str, Camera]) -> list[str]:
    return [camera.error for camera in cameras.values() if getattr(camera, "error", None)]


def _msgpack(obj: Any) -> Response:
    return Response(content=msgpack.packb(obj, use_bin_type=True), media_type=MSGPACK_MEDIA_TYPE)


_MSGPACK_RESPONSE = {200: {"content": {MSGPACK_MEDIA_TYPE: {}}, "description": "msgpack map (see module docs)"}}


def _field_path(loc) -> str:
    parts = [str(p) for p in loc if p != "body"]
    path = "body" if parts and parts[0].isdigit() else ""  # e.g. a JSON syntax error at a position
    for part in parts:
        path += f"[{part}]" if part.isdigit() else (f".{part}" if path else part)
    return path or "body"


async def _validation_error_handler(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field; drops pydantic's echo of the input (NaN/inf cannot go into JSON)."""
    errors = [{"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
              for err in exc.errors()]
    message = "; ".join(f"{_field_path(err['loc'])}: {err['msg']}" for err in errors)
    return JSONResponse(status_code=422, content={"detail": errors, "message": message})


def _leading_field(message: str) -> str:
    """Backends name the field first ("q: outside joint limits ..."); fall back to the whole body."""
    head, sep, _ = message.partition(":")
    return head if sep and head.replace("_", "").replace(".", "").isalnum() else "body"


def _unprocessable(field: str, message: str) -> HTTPException:
    """422 shaped like pydantic's own errors, so clients find the field in the same place."""
    return HTTPException(status_code=422, detail=[{"loc": ["body", field], "msg": message, "type": "value_error"}])


# ---------------------------------------------------------------- auth + session middleware


class _GuardMiddleware:
    """Pure ASGI: bearer token on every path, and the server session id on every response.

    A client that sends the session id it knows gets 409 once the server has restarted, so a
    command from a stale episode never reaches a fresh backend.
    """

    def __init__(self, app, token: str | None, session: str):
        self.app = app
        self.token = None if token is None else token.encode()
        self.session = session.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.token is not None:
            auth = headers.get(b"authorization")
            if auth is None:
                return await self._reject(send, 401, "missing bearer token: send the header 'Authorization: Bearer <token>'")
            scheme, _, credential = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credential.strip(), self.token):
                return await self._reject(send, 403, "invalid bearer token in the 'Authorization' header")
        expected = headers.get(SESSION_HEADER.encode())
        if expected and expected != self.session:
            return await self._reject(
                send, 409, f"robot server restarted: session {expected.decode(errors='replace')} is gone "
                           f"(now {self.session.decode()}); reset the episode")

        async def send_with_session(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(SESSION_HEADER.encode(), self.session)]
            await send(message)

        await self.app(scope, receive, send_with_session)

    async def _reject(self, send, status: int, message: str):
        body = json.dumps({"detail": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (SESSION_HEADER.encode(), self.session)]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------- the guarded robot


class RobotGuard:
    """Validation beyond the body schema, the safety box, the watchdog and the safety stop.

    All commands go through here under one lock, so the watchdog never interleaves a hold
    with a command and the measured-pose check sees a consistent target.
    """

    def __init__(self, backend: Backend, config: ServerConfig):
        self.backend = backend
        self.config = config
        self.lockstep = bool(getattr(backend, "lockstep", False))
        self.lock = threading.RLock()
        self.session = uuid.uuid4().hex[:12]
        self.started = time.monotonic()
        self.last_command = time.monotonic()
        self.watchdog_tripped = False
        self.watchdog_trips = 0
        self.safety_stop: str | None = None
        self.safety_stops = 0
        # The measured-pose check arms once the arm is inside the box (it may start outside, e.g. at
        # home above a low box) and disarms on recover and joint reset, which may leave the box.
        self.armed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- commands
    def _commanded(self) -> None:
        self.last_command = time.monotonic()
        self.watchdog_tripped = False

    def _require_no_stop(self) -> None:
        if self.safety_stop is not None:
            raise HTTPException(status_code=409, detail=(
                f"safety stop active ({self.safety_stop}); the arm holds its pose: POST /recover to continue"))

    def checked_target(self, pose: list[float]) -> tuple[np.ndarray, bool]:
        pose = np.asarray(pose, dtype=np.float64)
        box = self.config.safety_box
        if box is None:
            return pose, False
        violation = box.violation(pose)
        if violation is None:
            return pose, False
        if self.config.on_violation == "reject":
            raise _unprocessable("pose", f"target outside the safety box: {violation}")
        return box.clip(pose), True

    def set_target(self, pose: list[float], gripper: float | None) -> tuple[np.ndarray, bool]:
        with self.lock:
            self._require_no_stop()
            target, clipped = self.checked_target(pose)
            self._call(self.backend.set_target, target, gripper)
            self._commanded()
            return target, clipped

    def command(self, method, *args) -> Any:
        with self.lock:
            result = self._call(method, *args)
            self._commanded()
            return result

    def joint_reset(self, q, duration: float) -> None:
        with self.lock:
            self._require_no_stop()
            self.armed = False
            self._call(self.backend.joint_reset, q, duration)
            self._commanded()

    def teleport(self, q) -> None:
        with self.lock:
            self._require_no_stop()
            self.armed = False
            self._call(self.backend.reset_robot, q)
            self._commanded()

    def recover(self) -> None:
        with self.lock:
            self._call(self.backend.recover)
            if self.safety_stop is not None:
                log.warning("safety stop cleared by /recover (was: %s)", self.safety_stop)
            self.safety_stop = None
            self.armed = False  # re-armed by the monitor once the measured pose is back inside
            self._commanded()

    def advance(self, seconds: float) -> None:
        """Lockstep: advance in slices of 1/monitor_hz, checking the measured pose after each
        (as the monitor thread does in real time); slices add up to the same number of ticks."""
        with self.lock:
            dt = getattr(self.backend, "dt", None)
            if dt is None or self.config.safety_box is None:
                self._call(self.backend.advance, seconds)
            else:
                ticks = int(round(seconds / dt))
                per_slice = max(1, int(round(1.0 / (self.config.monitor_hz * dt))))
                while ticks > 0:
                    n = min(per_slice, ticks)
                    self._call(self.backend.advance, n * dt)
                    ticks -= n
                    self.check_measured(self.backend.state())
            self._commanded()
            self.check_measured(self.backend.state())

    @staticmethod
    def _call(method, *args):
        try:
            return method(*args)
        except ValueError as exc:  # the backend's own validation: nothing moved
            raise _unprocessable(_leading_field(str(exc)), str(exc)) from None
        except RuntimeError as exc:  # a real arm in a fault state (stale driver, reflex) refuses until /recover
            raise HTTPException(status_code=409, detail=str(exc)) from None

    # -- measured pose and watchdog
    def check_measured(self, state: RobotState) -> None:
        box = self.config.safety_box
        if box is None:
            return
        with self.lock:
            violation = box.violation(state.tcp_pose, self.config.measured_tolerance)
            if not self.armed:
                self.armed = violation is None
                return
            if violation is not None and self.safety_stop is None:
                self.backend.hold()
                self.safety_stop = f"measured pose left the safety box: {violation}"
                self.safety_stops += 1
                log.error("SAFETY STOP: %s; holding until POST /recover", self.safety_stop)

    def decorate(self, state: RobotState) -> dict[str, Any]:
        out = state.to_dict()
        if self.safety_stop is not None:
            out["errors"] = list(out["errors"]) + [f"safety_stop: {self.safety_stop}"]
            out["controller_mode"] = "hold"
        return out

    def observe_state(self) -> dict[str, Any]:
        state = self.backend.state()
        self.check_measured(state)
        return self.decorate(state)

    def _monitor(self) -> None:
        period = 1.0 / self.config.monitor_hz
        timeout = self.config.watchdog_timeout
        while not self._stop.wait(period):
            try:
                if timeout is not None and not self.watchdog_tripped and time.monotonic() - self.last_command > timeout:
                    with self.lock:
                        if time.monotonic() - self.last_command > timeout:
                            self.backend.hold()
                            self.watchdog_tripped = True
                            self.watchdog_trips += 1
                            log.warning("watchdog: no command for %.2f s, holding the current pose", timeout)
                self.check_measured(self.backend.state())
            except Exception:  # keep watching: a transient backend error must not end the watchdog
                log.exception("robot monitor iteration failed")

    def start(self) -> None:
        # A lockstep backend only moves inside /sim/advance, which checks the pose itself; a
        # wall-clock watchdog there would break run-to-run determinism.
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

    def health(self) -> dict[str, Any]:
        try:
            errors = list(self.backend.state().errors)
        except Exception as exc:  # health must answer even when the backend cannot
            errors = [f"backend state unavailable: {exc!r}"]
        if self.safety_stop is not None:
            errors.append(f"safety_stop: {self.safety_stop}")
        return {
            "ok": not errors,
            "backend": getattr(self.backend, "name", type(self.backend).__name__),
            "lockstep": self.lockstep,
            "session": self.session,
            "uptime_s": time.monotonic() - self.started,
            "errors": errors,
            "watchdog": {"timeout_s": self.config.watchdog_timeout, "active": not self.lockstep and
                         self.config.watchdog_timeout is not None, "holding": self.watchdog_tripped,
                         "trips": self.watchdog_trips, "since_last_command_s": time.monotonic() - self.last_command},
            "safety": {"box": None if self.config.safety_box is None else dataclasses.asdict(self.config.safety_box),
                       "on_violation": self.config.on_violation, "stopped": self.safety_stop is not None,
                       "reason": self.safety_stop, "stops": self.safety_stops, "armed": self.armed},
        }


# ---------------------------------------------------------------- the app


def create_app(backend: Backend, cameras: Mapping[str, Camera] | None = None,
               config: ServerConfig = ServerConfig()) -> FastAPI:
    """FastAPI app serving ``backend`` and ``cameras`` (wrap real cameras in ``ThreadedCamera`` first).

    The app starts its watchdog thread on startup and stops it on shutdown; the caller owns and
    closes the backend and cameras.
    """
    cameras = dict(cameras or {})
    guard = RobotGuard(backend, config)
    # Every camera read happens on this one thread: renderers and camera SDKs are often bound to
    # the thread that opened them (an EGL context is current in one thread at a time).
    camera_thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="camera-read")

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        guard.start()
        try:
            yield
        finally:
            guard.stop()
            camera_thread.shutdown(wait=False)

    app = FastAPI(title="serl robot server", version="1", lifespan=lifespan,
                  description=__doc__.split("\n\n")[0])
    app.state.guard = guard
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_middleware(_GuardMiddleware, token=config.token, session=guard.session)

    def read_images(names=None) -> dict[str, tuple[np.ndarray, float]]:
        """Newest frames; a failing capture-thread camera is left out (its fault is in state and
        health, and its thread retries it) unless it was asked for by name (503)."""
        asked = names is not None
        names = list(cameras) if names is None else names
        if not all(isinstance(cameras[name], ThreadedCamera) for name in names):
            return camera_thread.submit(lambda: {name: cameras[name].read() for name in names}).result()
        frames = {}
        for name in names:
            if cameras[name].error is not None and not asked:
                continue
            try:
                frames[name] = cameras[name].read()  # just the newest frame: no hop
            except Exception as exc:
                if asked:
                    raise HTTPException(status_code=503, detail=f"camera {name!r} is failing: {exc}") from None
        return frames

    def observe_state() -> dict[str, Any]:
        out = guard.observe_state()
        faults = [fault for fault in _camera_faults(cameras) if fault not in out["errors"]]
        if faults:
            out["errors"] = list(out["errors"]) + faults
        return out

    # A real-time backend answers state/target/gripper in microseconds (a lock and a copy), so those
    # run on the event loop: a hop to the threadpool would cost more than the call under GIL load.
    # Lockstep backends keep every route in the threadpool (renders happen there).
    inline = not guard.lockstep and all(isinstance(camera, ThreadedCamera) for camera in cameras.values())

    def fast(fn):
        if not inline:
            return fn

        @functools.wraps(fn)
        async def on_event_loop(*args, **kwargs):
            return fn(*args, **kwargs)

        return on_event_loop

    @app.get("/health", summary="Liveness, watchdog and safety status")
    @fast
    def health() -> dict[str, Any]:
        out = guard.health()
        out["cameras"] = {name: list(camera.shape) for name, camera in cameras.items()}
        camera_faults = [fault for fault in _camera_faults(cameras) if fault not in out["errors"]]
        out["errors"] += camera_faults
        out["ok"] = out["ok"] and not camera_faults
        return out

    @app.get("/state", summary="Measured state of the arm (RobotState)")
    @fast
    def state() -> dict[str, Any]:
        return observe_state()

    @app.post("/target", summary="New impedance equilibrium pose (+ optional gripper width)")
    @fast
    def target(body: TargetBody) -> dict[str, Any]:
        pose, clipped = guard.set_target(body.pose, body.gripper)
        return {"target": pose.tolist(), "clipped": clipped}

    @app.post("/gripper", summary="Move the fingers towards a width (non-blocking)")
    @fast
    def gripper(body: GripperBody) -> dict[str, Any]:
        guard.command(backend.set_gripper, body.width)
        return {"width": body.width}

    @app.post("/impedance", summary="Replace the Cartesian impedance parameters")
    def impedance(body: ImpedanceBody = Body(default_factory=ImpedanceBody)) -> dict[str, Any]:
        try:
            params = body.to_params()
        except ValueError as exc:
            raise _unprocessable(_leading_field(str(exc)), str(exc)) from None
        guard.command(backend.set_impedance, params)
        return {"impedance": params.to_dict()}

    @app.post("/joint_reset", summary="Blocking joint-space move (home when q is omitted)")
    def joint_reset(body: JointResetBody = Body(default_factory=JointResetBody)) -> dict[str, Any]:
        q = None if body.q is None else np.asarray(body.q)
        guard.joint_reset(q, body.duration)
        return {"state": observe_state()}

    @app.post("/recover", summary="Clear backend errors and the safety stop; hold the current pose")
    def recover() -> dict[str, Any]:
        guard.recover()
        return {"state": observe_state()}

    @app.get("/images", summary="Newest frame of every camera (msgpack)", response_class=Response,
             responses=_MSGPACK_RESPONSE)
    @fast
    def images(camera: Annotated[Optional[list[str]], Query(description="only these cameras (repeatable)")] = None
               ) -> Response:
        if camera is None:
            return _msgpack(encode_images(read_images()))
        unknown = sorted(set(camera) - set(cameras))
        if unknown:
            raise HTTPException(status_code=422, detail=[{
                "loc": ["query", "camera"], "type": "value_error",
                "msg": f"unknown camera(s) {unknown}; this server has {sorted(cameras)}"}])
        return _msgpack(encode_images(read_images(list(dict.fromkeys(camera)))))

    @app.get("/observe", summary="State and all camera frames in one response (msgpack)",
             response_class=Response, responses=_MSGPACK_RESPONSE)
    @fast
    def observe() -> Response:
        return _msgpack({"state": observe_state(), "images": encode_images(read_images())})

    has_scene = hasattr(type(backend), "scene") or hasattr(backend, "scene")

    def scene() -> dict[str, list[float]]:
        return {name: np.asarray(pose).tolist() for name, pose in backend.scene.items()}

    def step_command(body: StepBody) -> tuple[list[float] | None, bool]:
        if body.advance is not None and not guard.lockstep:
            raise _unprocessable("advance", "only lockstep (simulated) backends can advance time; send 'wait'")
        if body.wait is not None and guard.lockstep:
            raise _unprocessable("wait", "a lockstep backend does not run in real time; send 'advance'")
        target, clipped = None, False
        if body.pose is not None:
            target, clipped = guard.set_target(body.pose, body.gripper)
            target = target.tolist()
        elif body.gripper is not None:
            guard.command(backend.set_gripper, body.gripper)
        if body.advance is not None:
            guard.advance(body.advance)
        return target, clipped

    def step_observe(body: StepBody, target, clipped: bool) -> Response:
        frames = encode_images(read_images()) if body.images else {}
        return _msgpack({"state": observe_state(), "images": frames, "target": target, "clipped": clipped,
                         "scene": scene() if body.scene and has_scene else None})

    async def call(fn, *args):
        return fn(*args) if inline else await run_in_threadpool(fn, *args)

    @app.post("/step", summary="Optional target, then advance (lockstep) or wait (real time), then observe (msgpack)",
              response_class=Response, responses=_MSGPACK_RESPONSE)
    async def step(body: StepBody) -> Response:
        # One round trip per env step: the env sends the time left to its tick as ``wait``, so the
        # period stays on the env's clock while the observation is taken here at that tick.
        deadline = time.perf_counter() + (body.wait or 0.0)
        target, clipped = await call(step_command, body)
        if body.wait:
            await _sleep_until(deadline)
        return await call(step_observe, body, target, clipped)

    if guard.lockstep and callable(getattr(backend, "advance", None)):
        @app.post("/sim/advance", summary="Run the lockstep simulation forward")
        def sim_advance(body: AdvanceBody) -> dict[str, Any]:
            guard.advance(body.seconds)
            return {"timestamp": backend.state().timestamp}

    if hasattr(type(backend), "scene") or hasattr(backend, "scene"):
        @app.get("/sim/scene", summary="Ground-truth poses of the task objects")
        def sim_scene() -> dict[str, list[float]]:
            return scene()

    if callable(getattr(backend, "reset_robot", None)):
        @app.post("/sim/reset_robot", summary="Put the arm at rest at q (home when omitted) instantly")
        def sim_reset_robot(body: ResetRobotBody = Body(default_factory=ResetRobotBody)) -> dict[str, Any]:
            q = None if body.q is None else np.asarray(body.q)
            guard.teleport(q)
            return {"state": observe_state()}

    if callable(getattr(backend, "reset_scene", None)):
        @app.post("/sim/reset_scene", summary="Put the task objects back at a random pose")
        def sim_reset_scene(body: ResetSceneBody = Body(default_factory=ResetSceneBody)) -> dict[str, Any]:
            guard.command(backend.reset_scene, body.seed)
            return {"scene": {name: np.asarray(pose).tolist() for name, pose in backend.scene.items()}}

    return app


# ---------------------------------------------------------------- running it


class ServerThread:
    """Run an app with uvicorn on its own thread (tests, benchmarks, in-process use).

    Binds before returning, so ``url`` is valid at once; ``port=0`` picks a free port.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 timeout_keep_alive: float = 30.0):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                                timeout_keep_alive=timeout_keep_alive)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name=f"uvicorn-{self.port}", daemon=True)

    def start(self, timeout: float = 10.0) -> "ServerThread":
        if not self.thread.is_alive():
            self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"robot server on {self.url} did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10.0)
        self.sock.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """``python -m robot_servers`` / ``serl serve``: one backend, its cameras, one HTTP port."""

    backend: str = "twin"  # twin | ros2 | libfranka
    task: Optional[str] = None  # task name (serl.envs.tasks): safety box, cameras, robot and scene
    host: str = "127.0.0.1"  # 0.0.0.0 exposes the robot to the network: use a token
    port: int = 5000
    token: Optional[str] = None  # bearer token; defaults to $SERL_ROBOT_TOKEN when set
    on_violation: Literal["clip", "reject"] = "clip"
    measured_tolerance: float = 0.01
    watchdog_timeout: Optional[float] = 0.5
    lockstep: bool = False  # twin only: simulated time advances only on /sim/advance
    camera: tuple[str, ...] = ()  # real cameras, e.g. realsense:wrist=SERIAL or opencv:front=/dev/video0
    camera_fps: float = 30.0  # capture rate of each camera thread
    option: tuple[str, ...] = ()  # extra backend options as KEY=VALUE (VALUE parsed as JSON when it parses)
    log_level: str = "info"


def _parse_options(items: tuple[str, ...]) -> dict[str, Any]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option expects KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def backend_options(config: ServeConfig, task=None) -> dict[str, Any]:
    """Keyword options for ``make_backend``: what the task implies for the twin, then ``--option``s."""
    options: dict[str, Any] = {}
    if config.backend == "twin":
        options["lockstep"] = config.lockstep
        if task is not None:
            options.update(robot=task.robot, scene=task.scene, impedance=task.compliance)
            if task.cameras:
                options["cameras"] = tuple(camera.name for camera in task.cameras)
                options["image_size"] = tuple(task.cameras[0].size)
                crops = {camera.name: tuple(camera.crop) for camera in task.cameras if camera.crop is not None}
                if crops:
                    options["crops"] = crops
    elif config.lockstep:
        raise ValueError(f"--lockstep needs the twin backend, not {config.backend!r}")
    elif config.backend in ("ros2", "libfranka") and task is not None and task.cameras and not config.camera:
        # the backend opens the task's cameras itself (or --option cameras=[...]) with the task's crops and sizes
        options["task_cameras"] = tuple(task.cameras)
    options.update(_parse_options(config.option))
    return options


def build_server(config: ServeConfig) -> tuple[FastAPI, Backend, dict[str, Camera]]:
    """Backend, cameras (threaded unless lockstep) and the app, as ``serve`` runs them."""
    import os

    from robot_servers.backends import make_backend
    from robot_servers.cameras.threaded import threaded_cameras

    task = None
    if config.task is not None:
        from serl.envs.tasks import get_task  # lazy: the server needs the env package only for a task

        task = get_task(config.task)
    backend = make_backend(config.backend, **backend_options(config, task))
    backend_cameras = callable(getattr(backend, "cameras", None)) and not config.camera
    cameras: dict[str, Camera] = dict(backend.cameras()) if backend_cameras else {}
    if config.camera:
        from robot_servers.cameras.specs import open_cameras  # lazy: pyrealsense2 / cv2 only when asked

        try:
            cameras = open_cameras(config.camera, task.cameras if task is not None else ())
        except Exception:
            backend.close()
            raise
    missing = [] if task is None else [camera.name for camera in task.cameras if camera.name not in cameras]
    if missing:
        for camera in cameras.values():
            camera.close()
        backend.close()
        raise ValueError(f"task {task.name!r} needs camera(s) {missing}: pass --camera KIND:NAME=DEVICE "
                         "or set CameraSpec.serial in the task")
    if not getattr(backend, "lockstep", False):
        # Lockstep frames are rendered on request so that they belong to the simulated instant.
        # Cameras the backend renders share its render context, hence one thread.
        cameras = threaded_cameras(cameras, max_fps=config.camera_fps, shared_thread=backend_cameras)
    token = config.token or os.environ.get("SERL_ROBOT_TOKEN") or None
    server_config = ServerConfig(
        safety_box=None if task is None else task.safety_box,
        on_violation=config.on_violation,
        measured_tolerance=config.measured_tolerance,
        watchdog_timeout=config.watchdog_timeout,
        token=token,
    )
    return create_app(backend, cameras, server_config), backend, cameras


def serve(config: ServeConfig) -> None:
    """Run the robot server until interrupted; closes cameras and backend on the way out."""
    import os

    import uvicorn

    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = config.token or os.environ.get("SERL_ROBOT_TOKEN")
    if config.host not in ("127.0.0.1", "localhost", "::1") and not token:
        log.warning("\n%s\nbinding %s WITHOUT a token: anyone on the network can move the robot. "
                    "Pass --token (or set SERL_ROBOT_TOKEN).\n%s", "!" * 72, config.host, "!" * 72)
    if config.task is None:
        log.warning("no --task given: commands are not limited by any safety box")
    # The physics/control and camera threads share the GIL with the request handlers; a shorter
    # switch interval (default 5 ms) bounds how long a request waits for it.
    sys.setswitchinterval(0.001)
    app, backend, cameras = build_server(config)
    try:
        uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level, access_log=False)
    finally:
        for camera in cameras.values():
            camera.close()
        backend.close()
