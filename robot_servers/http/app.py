"""The robot server's HTTP API: a FastAPI app in front of one ``RobotGuard`` and its cameras.

Bodies are checked by the schemas (``robot_servers.http.schemas``), then every command goes through
the guard, whose refusals map to status codes here: ``CommandRejected`` 422 (naming the field),
``SafetyStopActive``, ``RobotFault`` and ``ArmBusy`` 409. Binary responses are ``robot_servers.wire`` msgpack
(arrays as typed raw bytes, never pickle). An optional bearer token guards every path.

Endpoints (JSON bodies):

    GET  /health            ok, errors, watchdog and safety status, cameras, session id
    GET  /state             RobotState (server-side errors such as the safety stop appended)
    POST /target            {"pose": [x, y, z, qx, qy, qz, qw], "gripper": width?}
    POST /gripper           {"width": 0..0.08}
    POST /impedance         ImpedanceParams fields
    POST /joint_reset       {"q": [7]?, "duration": s}   (blocking; reads are served meanwhile, commands get 409)
    POST /recover           clear backend errors and the safety stop
    POST /safety_stop       {"reason": str?}: latch the safety stop (hold; commands get 409 until /recover)
    GET  /images            all cameras' newest frames (?camera=NAME to pick)   [msgpack]
    GET  /observe           state + all frames in one response                   [msgpack]
    POST /step              {"pose"?, "gripper"?, "advance"? (lockstep) | "wait"? (real time), "images": bool,
                             "scene": bool} → observe                                        [msgpack]
    POST /sim/advance (lockstep twin), GET /sim/scene, POST /sim/reset_scene, POST /sim/reset_robot  (twin)
    POST /serl/...          SERL's / HIL-SERL's Flask API, when mounted (``robot_servers.http.serl_api``)

Every response carries ``x-robot-session``; a request that sends a stale one gets 409 (server restarted).
A body over ``ServerConfig.max_body_bytes`` gets 413 before it is read; a body that is not JSON, 422.

Binary responses::

    /images  -> {camera: {"frame": array, "timestamp": t}}
    /observe -> {"state": <RobotState dict>, "images": <as /images>}
    /step    -> {"state": ..., "images": ..., "target": [7] | None, "clipped": bool, "scene": {name: [7]} | None}
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import time
from typing import Annotated, Any, Callable, Mapping, Optional, Sequence

import numpy as np
from fastapi import Body, FastAPI, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from robot_servers.backends.base import Backend, ImpedanceParams
from robot_servers.cameras.base import Camera
from robot_servers.cameras.threaded import ThreadedCamera
from robot_servers.guard import (
    ArmBusy,
    CommandRejected,
    GuardConfig,
    NotSupported,
    RobotFault,
    RobotGuard,
    SafetyStopActive,
)
from robot_servers.http.middleware import SESSION_HEADER, BodyLimitMiddleware, TokenAndSessionMiddleware
from robot_servers.http.schemas import (
    AdvanceBody,
    GripperBody,
    ImpedanceBody,
    JointResetBody,
    PairTargetBody,
    ResetRobotBody,
    ResetSceneBody,
    SafetyStopBody,
    StepBody,
    TargetBody,
)
from robot_servers.limits import MAX_BODY_BYTES
from robot_servers.wire import encode_images, packb

MSGPACK_MEDIA_TYPE = "application/msgpack"
SPIN_S = 0.001  # timers and sleeps wake up late under load; the last stretch before a tick is spun

__all__ = ["ServerConfig", "create_app", "SESSION_HEADER", "MSGPACK_MEDIA_TYPE"]


@dataclasses.dataclass(frozen=True)
class ServerConfig(GuardConfig):
    """What the guard enforces, plus the bearer token the app requires on every path when set and the
    largest request body it reads."""

    token: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES

    def __post_init__(self):
        super().__post_init__()
        if self.token is not None and not self.token:
            raise ValueError("ServerConfig.token must be a non-empty string or None")
        if not (isinstance(self.max_body_bytes, int) and self.max_body_bytes > 0):
            raise ValueError("ServerConfig.max_body_bytes must be a positive integer")


async def _sleep_until(deadline: float) -> None:
    remaining = deadline - time.perf_counter()
    if remaining > SPIN_S:
        await asyncio.sleep(remaining - SPIN_S)
    while time.perf_counter() < deadline:
        pass


def _msgpack(obj: Any) -> Response:
    return Response(content=packb(obj, "response"), media_type=MSGPACK_MEDIA_TYPE)


_MSGPACK_RESPONSE = {200: {"content": {MSGPACK_MEDIA_TYPE: {}}, "description": "msgpack map (see module docs)"}}


class _Refusal(BaseModel):
    detail: str
    error: Optional[str] = None  # the guard's exception, for 409


# What any route may answer besides its own 200 and 422 (those FastAPI lists per route).
_REFUSALS = {
    401: {"model": _Refusal, "description": "missing bearer token (the server has one)"},
    403: {"model": _Refusal, "description": "wrong bearer token"},
    409: {"model": _Refusal, "description": "refused now: SafetyStopActive, RobotFault, ArmBusy (a joint reset "
                                             "is running), or a stale x-robot-session (the server restarted)"},
    413: {"model": _Refusal, "description": "request body larger than the server's max_body_bytes"},
}


def _field_path(loc) -> str:
    parts = [str(p) for p in loc if p != "body"]
    path = "body" if parts and parts[0].isdigit() else ""  # e.g. a JSON syntax error at a position
    for part in parts:
        path += f"[{part}]" if part.isdigit() else (f".{part}" if path else part)
    return path or "body"


def _unprocessable(errors: list[dict[str, Any]]) -> JSONResponse:
    message = "; ".join(f"{_field_path(err['loc'])}: {err['msg']}" for err in errors)
    return JSONResponse(status_code=422, content={"detail": errors, "message": message})


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field; drops pydantic's echo of the input (NaN/inf cannot go into JSON)."""
    return _unprocessable([{"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
                           for err in exc.errors()])


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """A body FastAPI could not decode (not UTF-8, nested too deeply) is a 422 like any other bad JSON."""
    cause = exc.__cause__
    if exc.status_code == 400 and isinstance(cause, (ValueError, RecursionError)):  # FastAPI: "error parsing the body"
        why = "not UTF-8" if isinstance(cause, UnicodeDecodeError) else "nested too deeply" if isinstance(
            cause, RecursionError) else str(cause)
        return _unprocessable([{"loc": ["body"], "msg": f"JSON decode error: {why}", "type": "json_invalid"}])
    return await http_exception_handler(request, exc)


async def _rejected(_request: Request, exc: CommandRejected) -> JSONResponse:
    """The guard's refusal, shaped like pydantic's errors so clients find the field in the same place."""
    return _unprocessable([{"loc": ["body", exc.field], "msg": str(exc), "type": "value_error"}])


async def _conflict(_request: Request, exc: Exception) -> JSONResponse:
    """409, naming the guard's error so a client can raise the same one."""
    return JSONResponse(status_code=409, content={"detail": str(exc), "error": type(exc).__name__})


async def _not_supported(_request: Request, exc: NotSupported) -> JSONResponse:
    return JSONResponse(status_code=404, content={"detail": str(exc)})


def create_app(backend: Backend, cameras: Mapping[str, Camera] | None = None,
               config: ServerConfig = ServerConfig(),
               extensions: Sequence[Callable[[FastAPI, RobotGuard], None]] = ()) -> FastAPI:
    """FastAPI app serving ``backend`` and ``cameras`` (wrap real cameras in ``ThreadedCamera`` first).

    The app starts the guard's monitor thread on startup and stops it on shutdown; the caller owns and
    closes the backend and cameras. Each of ``extensions`` adds routes driven by the same guard
    (e.g. ``robot_servers.http.serl_api``).
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

    app = FastAPI(title="serl robot server", version="1", lifespan=lifespan, description=__doc__.split("\n\n")[0],
                  responses=_REFUSALS)
    app.state.guard = guard
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(CommandRejected, _rejected)
    app.add_exception_handler(SafetyStopActive, _conflict)
    app.add_exception_handler(RobotFault, _conflict)
    app.add_exception_handler(ArmBusy, _conflict)
    app.add_exception_handler(NotSupported, _not_supported)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    app.add_middleware(TokenAndSessionMiddleware, token=config.token, session=guard.session)
    frames = _FrameReader(cameras, camera_thread)

    def camera_faults() -> list[str]:
        return [camera.error for camera in cameras.values() if camera.error]

    def observe_state() -> dict[str, Any]:
        out = guard.state().to_dict()
        out["errors"] = list(out["errors"]) + [fault for fault in camera_faults() if fault not in out["errors"]]
        return out

    # A real-time backend answers state/target/gripper in microseconds (a lock and a copy), so those
    # run on the event loop: a hop to the threadpool would cost more than the call under GIL load.
    # Lockstep backends keep every route in the threadpool (renders happen there).
    inline = not guard.lockstep and all(isinstance(camera, ThreadedCamera) for camera in cameras.values())

    async def call(fn, *args):
        # Inline only while the guard's lock is free: a command holding it (a slow backend call)
        # must never stall the event loop, so then the call waits in the threadpool instead.
        if inline and guard.lock.acquire(blocking=False):
            try:
                return fn(*args)
            finally:
                guard.lock.release()
        return await run_in_threadpool(fn, *args)

    def fast(fn):
        if not inline:
            return fn

        @functools.wraps(fn)
        async def on_event_loop(*args, **kwargs):
            return await call(functools.partial(fn, *args, **kwargs))

        return on_event_loop

    @app.get("/health", summary="Liveness, watchdog and safety status")
    @fast
    def health() -> dict[str, Any]:
        out = guard.health()
        out["cameras"] = {name: list(camera.shape) for name, camera in cameras.items()}
        faults = [fault for fault in camera_faults() if fault not in out["errors"]]
        out["errors"] += faults
        out["ok"] = out["ok"] and not faults
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
        return {"width": guard.set_gripper(body.width)}

    @app.post("/impedance", summary="Replace the Cartesian impedance parameters")
    def impedance(body: ImpedanceBody = Body(default_factory=ImpedanceBody)) -> dict[str, Any]:
        return {"impedance": guard.set_impedance(ImpedanceParams(**body.model_dump())).to_dict()}

    # A plain def runs in the threadpool: the event loop serves reads while the arm moves.
    @app.post("/joint_reset", summary="Blocking joint-space move (home when q is omitted); commands get 409 meanwhile")
    def joint_reset(body: JointResetBody = Body(default_factory=JointResetBody)) -> dict[str, Any]:
        guard.joint_reset(body.q, body.duration)
        return {"state": observe_state()}

    @app.post("/recover", summary="Clear backend errors and the safety stop; hold the current pose")
    def recover() -> dict[str, Any]:
        guard.recover()
        return {"state": observe_state()}

    @app.post("/safety_stop", summary="Latch the safety stop: hold the arm and refuse commands until /recover")
    def safety_stop(body: SafetyStopBody = Body(default_factory=SafetyStopBody)) -> dict[str, Any]:
        guard.latch_safety_stop(f"requested: {body.reason}")
        return {"state": observe_state()}

    @app.get("/images", summary="Newest frame of every camera (msgpack)", response_class=Response,
             responses=_MSGPACK_RESPONSE)
    @fast
    def images(camera: Annotated[Optional[list[str]], Query(description="only these cameras (repeatable)")] = None
               ) -> Response:
        if camera is None:
            return _msgpack(encode_images(frames.read()))
        unknown = sorted(set(camera) - set(cameras))
        if unknown:
            raise HTTPException(status_code=422, detail=[{
                "loc": ["query", "camera"], "type": "value_error",
                "msg": f"unknown camera(s) {unknown}; this server has {sorted(cameras)}"}])
        return _msgpack(encode_images(frames.read(list(dict.fromkeys(camera)))))

    @app.get("/observe", summary="State and all camera frames in one response (msgpack)",
             response_class=Response, responses=_MSGPACK_RESPONSE)
    @fast
    def observe() -> Response:
        return _msgpack({"state": observe_state(), "images": encode_images(frames.read())})

    def scene() -> dict[str, list[float]]:
        return {name: np.asarray(pose).tolist() for name, pose in guard.scene().items()}

    def step_command(body: StepBody) -> tuple[list[float] | None, bool]:
        if body.wait is not None and guard.lockstep:
            raise CommandRejected("wait", "wait: a lockstep backend does not run in real time; send 'advance'")
        if body.advance is not None and not guard.lockstep:
            raise CommandRejected("advance", "advance: only lockstep (simulated) backends can advance time; send 'wait'")
        target, clipped = None, False
        if body.pose is not None:
            pose, clipped = guard.set_target(body.pose, body.gripper)
            target = pose.tolist()
        elif body.gripper is not None:
            guard.set_gripper(body.gripper)
        if body.advance is not None:
            guard.advance(body.advance)
        return target, clipped

    def step_observe(body: StepBody, target, clipped: bool) -> Response:
        return _msgpack({"state": observe_state(), "images": encode_images(frames.read()) if body.images else {},
                         "target": target, "clipped": clipped,
                         "scene": scene() if body.scene and guard.simulated else None})

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

    if guard.config.paired is not None:
        pair = guard.config.paired.pair

        @app.post("/pair/target", summary="Both arms' targets in one request, set back to back (two arms, one process)")
        def pair_target(body: PairTargetBody) -> dict[str, Any]:
            return pair.set_targets({arm: (target.pose, target.gripper) for arm, target in body.targets.items()})

    if guard.simulated:
        _add_sim_routes(app, guard, observe_state, scene)
    for extend in extensions:
        extend(app, guard)
    return app


def _add_sim_routes(app: FastAPI, guard: RobotGuard, observe_state, scene) -> None:
    """Routes only a simulated backend has: simulated time, ground truth, instant resets."""
    if guard.lockstep:
        @app.post("/sim/advance", summary="Run the lockstep simulation forward")
        def sim_advance(body: AdvanceBody) -> dict[str, Any]:
            guard.advance(body.seconds)
            return {"timestamp": guard.backend.state().timestamp}

    @app.get("/sim/scene", summary="Ground-truth poses of the task objects")
    def sim_scene() -> dict[str, list[float]]:
        return scene()

    @app.post("/sim/reset_robot", summary="Put the arm at rest at q (home when omitted) instantly")
    def sim_reset_robot(body: ResetRobotBody = Body(default_factory=ResetRobotBody)) -> dict[str, Any]:
        guard.reset_robot(body.q)
        return {"state": observe_state()}

    @app.post("/sim/reset_scene", summary="Put the task objects back at a random pose")
    def sim_reset_scene(body: ResetSceneBody = Body(default_factory=ResetSceneBody)) -> dict[str, Any]:
        return {"scene": {name: np.asarray(pose).tolist() for name, pose in guard.reset_scene(body.seed).items()}}


class _FrameReader:
    """Newest frames; a failing capture-thread camera is left out (its fault is in state and health,
    and its thread retries it) unless it was asked for by name (503)."""

    def __init__(self, cameras: Mapping[str, Camera], camera_thread: concurrent.futures.Executor):
        self.cameras = cameras
        self.camera_thread = camera_thread

    def read(self, names: list[str] | None = None) -> dict[str, tuple[np.ndarray, float]]:
        asked = names is not None
        names = list(self.cameras) if names is None else names
        cameras = self.cameras
        if not all(isinstance(cameras[name], ThreadedCamera) for name in names):
            return self.camera_thread.submit(lambda: {name: cameras[name].read() for name in names}).result()
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
