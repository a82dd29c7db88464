"""Running the robot server: ``python -m robot_servers`` / ``serl serve`` and ``ServerThread`` for in-process use.

The robot side knows no tasks: the learning side resolves a task into a ``ServedTask`` (its safety
box, cameras and twin options) and hands it in; without one the server runs with no safety box and
says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import socket
import sys
import threading
import time
from typing import Any, Literal, Mapping, Optional

import h11
import numpy as np
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from robot_servers.backends import make_backend
from robot_servers.backends.base import Backend
from robot_servers.cameras.base import Camera
from robot_servers.control.safety import SafetyBox
from robot_servers.http.app import ServerConfig, create_app
from robot_servers.limits import MAX_BODY_BYTES
from robot_servers.overrides import parse_overrides

log = logging.getLogger("robot_servers.serve")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """One backend, its cameras, one HTTP port."""

    backend: str = "twin"  # twin | ros2 | libfranka | libfranka-torque | serl-http
    host: str = "127.0.0.1"  # 0.0.0.0 exposes the robot to the network: use a token
    port: int = 5000
    token: Optional[str] = None  # bearer token; defaults to $SERL_ROBOT_TOKEN when set
    on_violation: Literal["clip", "reject"] = "clip"
    measured_tolerance: float = 0.01  # m the measured position may leave the box before a safety stop
    measured_rotation_tolerance: float = 0.05  # rad the measured orientation may leave it
    watchdog_timeout: Optional[float] = 0.5
    lockstep: bool = False  # twin only: simulated time advances only on /sim/advance
    camera: tuple[str, ...] = ()  # real cameras, e.g. realsense:wrist=SERIAL or opencv:front=/dev/video0
    camera_fps: float = 30.0  # capture rate of the cameras the backend renders (the twin); devices run at their own rate
    option: tuple[str, ...] = ()  # extra backend options as KEY=VALUE (VALUE parsed as JSON when it parses)
    log_level: str = "info"
    check: bool = False  # connect, print the backend's pre-flight report (ros2: controller, rates, QoS, limits) and exit
    serl_api: bool = False  # also serve SERL's / HIL-SERL's Flask robot-server API under /serl/
    serl_api_flavor: Literal["serl", "hil-serl"] = "hil-serl"  # gripper_pos: metres (serl) or 1 = open (hil-serl)
    arms: tuple[str, ...] = ()  # two arms in this process, e.g. left right: arm i on port + i, hands kept apart
    arm_option: tuple[str, ...] = ()  # one arm's backend option as ARM:KEY=VALUE (e.g. left:namespace=left)
    arm_base: tuple[str, ...] = ()  # ARM=x,y,z,yaw: where each real arm's base stands in one shared frame (m, rad)
    clearance: Optional[float] = None  # m kept between the two hands (None: the task's, else HandClearance's)
    serl_api_without_token: bool = False  # with a token set: open /serl/ anyway (SERL's clients send none)
    max_body_bytes: int = MAX_BODY_BYTES  # a larger request body is refused with 413 before it is read
    timeout_keep_alive: float = 5.0  # s a connection may sit idle (before its first request or between requests)
    timeout_request: float = 10.0  # s from a request's first byte until all of it (head and body) has arrived


@dataclasses.dataclass(frozen=True)
class ServedTask:
    """What a task asks of the robot server, resolved by the learning side."""

    name: str
    safety_box: SafetyBox | None = None
    cameras: tuple = ()  # the task's camera specs (name, size, crop, serial)
    twin: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # TwinConfig options: robot, scene, ...
    # A two-arm task: each arm's safety box by name, in serving order; the twin's layout and the hands' clearance.
    arms: Mapping[str, SafetyBox | None] = dataclasses.field(default_factory=dict)
    layout: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # bimanual_twin options: layout, separation
    clearance: float | None = None


def backend_options(config: ServeConfig, task: ServedTask | None = None) -> dict[str, Any]:
    """Keyword options for ``make_backend``: what the task implies, then ``--option``s."""
    options: dict[str, Any] = {}
    if config.backend == "twin":
        options["lockstep"] = config.lockstep
        if task is not None:
            options.update(task.twin)
    elif config.lockstep:
        raise ValueError(f"--lockstep needs the twin backend, not {config.backend!r}")
    elif config.backend in ("ros2", "libfranka", "libfranka-torque") and task is not None and task.cameras and not config.camera:
        # the backend opens the task's cameras itself (or --option cameras=[...]) with the task's crops and sizes
        options["task_cameras"] = tuple(task.cameras)
    options.update(parse_overrides(config.option, "--option"))
    return options


def build_server(config: ServeConfig, task: ServedTask | None = None) -> tuple[FastAPI, Backend, dict[str, Camera]]:
    """Backend, cameras (threaded unless lockstep) and the app, as ``serve`` runs them."""
    from robot_servers.cameras.threaded import threaded_cameras

    token = config.token or os.environ.get("SERL_ROBOT_TOKEN") or None
    extensions = _extensions(config, token)  # refuses a bad combination before anything opens
    backend = make_backend(config.backend, **backend_options(config, task))
    task_cameras = () if task is None else tuple(task.cameras)
    backend_cameras = not config.camera
    cameras: dict[str, Camera] = backend.cameras() if backend_cameras else {}
    if config.camera:
        from robot_servers.cameras.specs import open_cameras  # lazy: pyrealsense2 / cv2 only when asked

        try:
            cameras = open_cameras(config.camera, task_cameras)
        except Exception:
            backend.close()
            raise
    missing = [camera.name for camera in task_cameras if camera.name not in cameras]
    if missing:
        for camera in cameras.values():
            camera.close()
        backend.close()
        raise ValueError(f"task {task.name!r} needs camera(s) {missing}: pass --camera KIND:NAME=DEVICE "
                         "or set CameraSpec.serial in the task")
    if not backend.lockstep:
        # Lockstep frames are rendered on request so that they belong to the simulated instant.
        # Cameras the backend renders share its render context, hence one thread.
        cameras = threaded_cameras(cameras, max_fps=config.camera_fps, shared_thread=backend_cameras)
    server_config = _server_config(config, None if task is None else task.safety_box, token)
    try:
        return create_app(backend, cameras, server_config, extensions), backend, cameras
    except ValueError:
        for camera in cameras.values():
            camera.close()
        backend.close()
        raise


def _server_config(config: ServeConfig, box: SafetyBox | None, token: str | None, paired=None) -> ServerConfig:
    """What one arm's guard and app enforce, from the serve options."""
    return ServerConfig(safety_box=box, on_violation=config.on_violation, measured_tolerance=config.measured_tolerance,
                        measured_rotation_tolerance=config.measured_rotation_tolerance,
                        watchdog_timeout=config.watchdog_timeout, token=token, max_body_bytes=config.max_body_bytes,
                        paired=paired)


def _prepare_process(config: ServeConfig) -> None:
    """Logging, the warning for a server open to the network without a token, and the interpreter's switch interval."""
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = config.token or os.environ.get("SERL_ROBOT_TOKEN")
    if config.host not in LOOPBACK and not token:
        log.warning("\n%s\nbinding %s WITHOUT a token: anyone on the network can move the robot. "
                    "Pass --token (or set SERL_ROBOT_TOKEN).\n%s", "!" * 72, config.host, "!" * 72)
    # The physics/control and camera threads share the GIL with the request handlers; a shorter
    # switch interval (default 5 ms) bounds how long a request waits for it.
    sys.setswitchinterval(0.001)


def _extensions(config: ServeConfig, token: str | None) -> tuple:
    """Route sets beyond our own API that ``config`` asks for."""
    if not config.serl_api:
        return ()
    if config.lockstep:
        raise ValueError("--serl-api needs a real-time backend: SERL's clients keep time by sleeping (drop --lockstep)")
    from robot_servers.http.serl_api import SerlApiConfig, serl_api

    return (serl_api(SerlApiConfig(flavor=config.serl_api_flavor, allow_without_token=config.serl_api_without_token),
                     token),)


def preflight_check(config: ServeConfig, task: ServedTask | None = None) -> int:
    """``--check``: connect, print what the backend can tell before the first motion; 0 when nothing is wrong."""
    import json

    backend = make_backend(config.backend, **backend_options(config, task))
    try:
        report = backend.preflight() if hasattr(backend, "preflight") else {"backend": config.backend, "problems": []}
    finally:
        backend.close()
    print(json.dumps(report, indent=2, default=str))
    return 1 if report["problems"] else 0


@dataclasses.dataclass
class ServedArm:
    """One arm of a two-arm server: its app on its port, its backend and its cameras."""

    name: str
    port: int
    app: FastAPI
    backend: Backend
    cameras: dict[str, Camera]

    def close(self) -> None:
        for camera in self.cameras.values():
            camera.close()
        self.backend.close()


def _per_arm(items: tuple[str, ...], arms: tuple[str, ...], flag: str, separator: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {arm: [] for arm in arms}
    for item in items:
        arm, sep, rest = item.partition(separator)
        if not sep or arm not in out:
            raise ValueError(f"{flag} {item!r}: expected ARM{separator}... with ARM one of {list(arms)}")
        out[arm].append(rest)
    return out


def _bases(config: ServeConfig, arms: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Each real arm's base pose from ``--arm-base ARM=x,y,z,yaw``."""
    given = _per_arm(config.arm_base, arms, "--arm-base", "=")
    bases = {}
    for arm in arms:
        if len(given[arm]) != 1:
            raise ValueError(f"--arm-base: give {arm}=x,y,z,yaw once (where its base stands in one frame shared by "
                             "both arms, m and rad): the guard keeps the hands apart in that frame")
        try:
            x, y, z, yaw = (float(v) for v in given[arm][0].split(","))
        except ValueError:
            raise ValueError(f"--arm-base {arm}={given[arm][0]}: expected four numbers x,y,z,yaw") from None
        bases[arm] = np.array([x, y, z, 0.0, 0.0, np.sin(yaw / 2), np.cos(yaw / 2)])
    return bases


def build_pair(config: ServeConfig, task: ServedTask | None = None) -> list[ServedArm]:
    """Two arms in one process, arm i on ``config.port + i``, each behind its own guard (its own box) and both
    guards in one ``ArmPair``: the twin's two arms in one world, or two real backends with per-arm options."""
    from robot_servers.control.safety import HandClearance
    from robot_servers.guard import ArmPair

    arms = tuple(config.arms) or (tuple(task.arms) if task is not None else ())
    if len(arms) != 2 or len(set(arms)) != 2:
        raise ValueError(f"--arms: two different arm names, e.g. left right (got {list(arms)})")
    if config.camera or config.serl_api:
        raise ValueError("--camera and --serl-api serve one arm; a two-arm server renders the twin's cameras only")
    boxes = {arm: (task.arms.get(arm) if task is not None and task.arms else None) for arm in arms}
    options = backend_options(config, task)
    if config.backend == "twin":
        from robot_servers.backends.twin import TwinConfig, bimanual_twin

        if config.arm_option or config.arm_base:
            raise ValueError("--arm-option and --arm-base are for real arms; the twin places its arms by its layout")
        layout = dict(task.layout) if task is not None else {}
        backends = dict(zip(arms, bimanual_twin(TwinConfig(**options), **layout)))
        bases = {arm: backend.base_pose for arm, backend in backends.items()}
    else:
        bases = _bases(config, arms)
        per_arm = _per_arm(config.arm_option, arms, "--arm-option", ":")
        backends = {}
        try:
            for arm in arms:
                backends[arm] = make_backend(config.backend, **{**options, **parse_overrides(tuple(per_arm[arm]),
                                                                                             "--arm-option")})
        except BaseException:
            for backend in backends.values():
                backend.close()
            raise
    clearance = config.clearance if config.clearance is not None else (task.clearance if task is not None else None)
    pair = ArmPair(bases, HandClearance() if clearance is None else HandClearance(clearance))
    token = config.token or os.environ.get("SERL_ROBOT_TOKEN") or None
    served = []
    for index, arm in enumerate(arms):
        backend = backends[arm]
        cameras = backend.cameras()
        if not backend.lockstep:
            from robot_servers.cameras.threaded import threaded_cameras

            cameras = threaded_cameras(cameras, max_fps=config.camera_fps, shared_thread=True)
        server_config = _server_config(config, boxes[arm], token, paired=pair.arm(arm))
        served.append(ServedArm(arm, config.port + index, create_app(backend, cameras, server_config), backend,
                                cameras))
    return served


def serve(config: ServeConfig, task: ServedTask | None = None) -> None:
    """Run the robot server until interrupted; closes cameras and backend on the way out."""
    import uvicorn

    if config.check:
        sys.exit(preflight_check(config, task))
    if config.arms or (task is not None and task.arms):
        return serve_pair(config, task)

    _prepare_process(config)
    if task is None or task.safety_box is None:
        log.warning("no task safety box: commands are not limited by any box (serl serve --task NAME sets one)")
    app, backend, cameras = build_server(config, task)
    try:
        uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level,
                    **uvicorn_options(config.timeout_keep_alive, config.timeout_request))
    finally:
        for camera in cameras.values():
            camera.close()
        backend.close()


def serve_pair(config: ServeConfig, task: ServedTask | None = None) -> None:
    """Two arms until interrupted, both servers on one event loop: a step's two requests are answered by one thread
    one after the other, not by two threads taking turns at the interpreter."""
    import uvicorn

    _prepare_process(config)
    arms = build_pair(config, task)
    servers = [uvicorn.Server(uvicorn.Config(arm.app, host=config.host, port=arm.port, log_level=config.log_level,
                                             **uvicorn_options(config.timeout_keep_alive, config.timeout_request)))
               for arm in arms]

    async def both() -> None:
        async def one_stops_both() -> None:
            while not any(server.should_exit for server in servers):
                await asyncio.sleep(0.1)
            for server in servers:
                server.should_exit = True

        await asyncio.gather(*(server.serve() for server in servers), one_stops_both())

    for arm in arms:
        log.info("%s arm on http://%s:%d", arm.name, config.host, arm.port)
    try:
        asyncio.run(both())
    except KeyboardInterrupt:
        pass
    finally:
        for arm in arms:
            arm.close()


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the deadlines it lacks.

    A fresh connection that sends nothing is closed after ``timeout_keep_alive``, as uvicorn closes
    one idle between requests; a request must arrive whole, head and body, within ``timeout_request``
    of its first byte, so a client that trickles it a byte at a time (slowloris) is cut off.
    """

    def __init__(self, *args, timeout_request: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.timeout_request = timeout_request
        self.request_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_request()  # a pipelined request may already be partly in

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def _watch_request(self) -> None:
        state = self.conn.their_state
        arriving = state is h11.SEND_BODY or (state is h11.IDLE and bool(self.conn.trailing_data[0]))
        if not arriving:
            self._stop_deadline()
        elif self.request_deadline is None and not self.transport.is_closing():
            self.request_deadline = self.loop.call_later(self.timeout_request, self.transport.close)

    def _stop_deadline(self) -> None:
        if self.request_deadline is not None:
            self.request_deadline.cancel()
            self.request_deadline = None


def uvicorn_options(timeout_keep_alive: float, timeout_request: float) -> dict[str, Any]:
    """uvicorn settings of the robot server: h11 with both connection deadlines, no access log."""
    if not (timeout_keep_alive > 0 and timeout_request > 0):
        raise ValueError("timeout_keep_alive and timeout_request must be positive seconds")
    return {"http": functools.partial(TimedH11Protocol, timeout_request=timeout_request),
            "timeout_keep_alive": timeout_keep_alive, "access_log": False}


class ServerThread:
    """Run an app with uvicorn on its own thread (tests, benchmarks, in-process use).

    Binds before returning, so ``url`` is valid at once; ``port=0`` picks a free port.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 timeout_keep_alive: float = 30.0, timeout_request: float = 10.0):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        config = uvicorn.Config(app, log_level=log_level, lifespan="on",
                                **uvicorn_options(timeout_keep_alive, timeout_request))
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
