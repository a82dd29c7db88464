"""SERL's and HIL-SERL's robot-server API (their Flask ``franka_server.py``) under ``/serl/``, behind our guard.

A SERL task env sets ``SERVER_URL = "http://host:5000/serl/"`` and runs unchanged. Every command goes
through the same ``RobotGuard`` as the rest of the app (limits, safety box, measured-pose stop,
watchdog); a refusal is a 4xx with a message, never a motion.

    POST /serl/getstate     {pose (x, y, z, qx, qy, qz, qw), vel, force, torque, q, dq, jacobian, gripper_pos}
    POST /serl/getpos | getpos_euler | getvel | getforce | gettorque | getq | getdq | getjacobian | get_gripper
    POST /serl/pose         {"arr": [7]}  → "Moved"
    POST /serl/update_param flat, partial SERL compliance parameters → text
    POST /serl/clearerr     clear backend errors (never the guard's safety stop: that is POST /recover)
    POST /serl/jointreset   blocking joint move to the server's home joints (reads are served meanwhile)
    POST /serl/open_gripper | close_gripper | close_gripper_slow | move_gripper {"gripper_pos": 0..255}
    POST /serl/activate_gripper | reset_gripper | startimp | stopimp | set_load

Conventions as SERL's: quaternions reported with their largest component positive (scipy's
``from_matrix``) and accepted with either sign; force and torque in the end-effector frame;
``gripper_pos`` the finger sum in metres (flavor ``serl``) or normalised, 1 = open (``hil-serl``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, Literal, Optional

import numpy as np
from fastapi import APIRouter, Body, FastAPI, HTTPException
from fastapi.responses import PlainTextResponse

from robot_servers.backends.base import ImpedanceParams
from robot_servers.control.pose import quat_to_euler, quat_to_matrix
from robot_servers.guard import CommandRejected, NotSupported, RobotGuard, SafetyStopActive
from robot_servers.limits import MAX_GRIPPER_WIDTH, QUAT_NORM_TOLERANCE

log = logging.getLogger("robot_servers.serl_api")

PREFIX = "/serl"
FLAVORS = ("serl", "hil-serl")
JOINT_RESET_S = 5.0  # s for /jointreset (SERL's own takes ~10 s: it restarts its controllers)
AXES = ("x", "y", "z")
_GAINS = ("translational_stiffness", "translational_damping", "rotational_stiffness", "rotational_damping")
_SCALARS = ("nullspace_stiffness", "joint1_nullspace_stiffness")
_INTEGRAL = ("translational_Ki", "rotational_Ki")
_CLIPS = {f"{kind}_clip_{sign}{axis}": (kind, sign == "neg_", i)
          for kind in ("translational", "rotational") for sign in ("", "neg_") for i, axis in enumerate(AXES)}
UPDATE_PARAM_KEYS = (*_GAINS, *_SCALARS, *_INTEGRAL, *_CLIPS)

JsonBody = Optional[dict[str, Any]]
_NOT_IMPLEMENTED = {501: {"description": "this server cannot do it; the message says why"}}


@dataclasses.dataclass(frozen=True)
class SerlApiConfig:
    """How the SERL routes behave on this server."""

    flavor: Literal["serl", "hil-serl"] = "hil-serl"  # scale of gripper_pos: metres (serl) or 1 = open (hil-serl)
    joint_reset_s: float = JOINT_RESET_S
    # SERL's clients send no token. With a token configured the routes stay off unless this is set,
    # and then they are open to anyone who can reach the port.
    allow_without_token: bool = False

    def __post_init__(self):
        if self.flavor not in FLAVORS:
            raise ValueError(f"serl_api_flavor: expected one of {FLAVORS}, got {self.flavor!r}")


def serl_quat(quat) -> np.ndarray:
    """The sign SERL reports (scipy ``from_matrix``): the largest-magnitude component positive."""
    quat = np.asarray(quat, dtype=np.float64)
    return -quat if quat[int(np.argmax(np.abs(quat)))] < 0 else quat.copy()


def serl_api(config: SerlApiConfig = SerlApiConfig(), token: str | None = None) -> Callable[[FastAPI, RobotGuard], None]:
    """An extension for ``create_app`` that mounts the SERL routes (``token``: the server's bearer token)."""
    if token and not config.allow_without_token:
        raise ValueError("--serl-api with a token: SERL's clients cannot send one, so its routes stay off. "
                         "Pass --serl-api-without-token to open /serl/ without it (anyone who can reach the "
                         "port can then move the arm through those routes), or run without a token on a closed network")

    def mount(app: FastAPI, guard: RobotGuard) -> None:
        if guard.lockstep:
            raise ValueError("--serl-api needs a real-time backend: SERL's clients keep time by sleeping "
                             "(drop --lockstep)")
        app.include_router(_router(guard, config))
        if token:
            app.add_middleware(_OpenSerlPaths, token=token)
        log.info("SERL API (%s flavor) at %s/", config.flavor, PREFIX)

    return mount


class _OpenSerlPaths:
    """Outermost ASGI layer: requests to /serl/ count as authorised (SERL cannot send a token)."""

    def __init__(self, app, token: str):
        self.app = app
        self.authorization = b"Bearer " + token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(PREFIX + "/"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"authorization"]
            scope = dict(scope, headers=headers + [(b"authorization", self.authorization)])
        await self.app(scope, receive, send)


def _text(message: str) -> PlainTextResponse:
    return PlainTextResponse(message)


def _number(body: dict, key: str, field: str | None = None) -> float:
    """A finite real number from the body (bools and strings refused)."""
    field = field or key
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CommandRejected(field, f"{field}: expected a finite number, got {value!r}")
    return float(value)


def _numbers(body: dict, key: str, size: int) -> np.ndarray:
    value = body.get(key)
    if not isinstance(value, (list, tuple)) or len(value) != size:
        raise CommandRejected(key, f"{key}: expected a list of {size} numbers, got {value!r}")
    return np.array([_number({key: v}, key) for v in value])


def parse_pose(body: JsonBody) -> np.ndarray:
    """The ``arr`` of a /pose body: 7 finite numbers whose quaternion is near unit (either sign)."""
    if not isinstance(body, dict) or "arr" not in body:
        raise CommandRejected("arr", 'arr: missing; send {"arr": [x, y, z, qx, qy, qz, qw]}')
    arr = body["arr"]
    if not isinstance(arr, (list, tuple)) or len(arr) != 7:
        got = len(arr) if isinstance(arr, (list, tuple)) else repr(arr)
        raise CommandRejected("arr", f"arr: expected 7 numbers (x, y, z, qx, qy, qz, qw), got {got}")
    pose = np.array([_number({"arr": v}, "arr") for v in arr])
    norm = float(np.linalg.norm(pose[3:]))
    if not abs(norm - 1.0) <= QUAT_NORM_TOLERANCE:
        raise CommandRejected("arr", (
            f"arr: quaternion norm is {norm:.3g}, not 1; refused, the arm does not move. A component-wise "
            "interpolation between two quaternions of opposite sign passes through zero: interpolate from the "
            "pose /getstate reports (largest component positive) or re-sign the goal to the same hemisphere"))
    return pose


def _router(guard: RobotGuard, config: SerlApiConfig) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["SERL API"])
    backend = guard.backend
    sent: list[ImpedanceParams] = [ImpedanceParams()]  # what /update_param last set (backends that do not report theirs)

    def current_params() -> ImpedanceParams:
        """The law's parameters now where the backend reports them (the twin), else the last ones set here."""
        return backend.impedance() or sent[0]

    def gripper_pos(width: float) -> float:
        return width if config.flavor == "serl" else width / MAX_GRIPPER_WIDTH

    def serl_state() -> dict[str, Any]:
        state = guard.state()
        pose = state.tcp_pose
        to_tcp = quat_to_matrix(pose[3:]).T  # SERL reports the wrench in the end-effector frame
        jacobian = backend.jacobian()
        return {
            "pose": [*pose[:3].tolist(), *serl_quat(pose[3:]).tolist()],
            "vel": state.tcp_vel.tolist(),
            "force": (to_tcp @ state.wrench[:3]).tolist(),
            "torque": (to_tcp @ state.wrench[3:]).tolist(),
            "q": state.q.tolist(),
            "dq": state.dq.tolist(),
            # SERL's clients reshape it to 6×7 unconditionally: zeros, flagged, where there is none
            "jacobian": (np.zeros((6, 7)) if jacobian is None else np.asarray(jacobian)).tolist(),
            "jacobian_available": jacobian is not None,
            "gripper_pos": gripper_pos(state.gripper_width),
            "errors": state.errors,
        }

    @router.post("/getstate", summary="Pose, velocity, wrench (end-effector frame), joints, Jacobian, gripper")
    def getstate() -> dict[str, Any]:
        return serl_state()

    for route, key in (("getpos", "pose"), ("getvel", "vel"), ("getforce", "force"), ("gettorque", "torque"),
                       ("getq", "q"), ("getdq", "dq"), ("getjacobian", "jacobian")):
        router.add_api_route(f"/{route}", _getter(serl_state, key), methods=["POST"], summary=f"{{{key!r}: ...}}")

    @router.post("/getpos_euler", summary="Position and extrinsic xyz euler angles")
    def getpos_euler() -> dict[str, Any]:
        pose = guard.state().tcp_pose
        return {"pose": [*pose[:3].tolist(), *quat_to_euler(pose[3:]).tolist()]}

    @router.post("/get_gripper", summary="gripper_pos in the flavor's scale")
    def get_gripper() -> dict[str, Any]:
        return {"gripper": gripper_pos(guard.state().gripper_width)}

    @router.post("/pose", summary="New impedance equilibrium {arr: [x, y, z, qx, qy, qz, qw]}")
    def pose(body: JsonBody = Body(None)) -> PlainTextResponse:
        guard.set_target(parse_pose(body))
        return _text("Moved")

    @router.post("/update_param", summary="Partial SERL compliance parameters")
    def update_param(body: JsonBody = Body(None)) -> PlainTextResponse:
        sent[0] = guard.set_impedance(map_update_param(current_params(), body or {}))
        return _text("Updated compliance parameters")

    def clear_errors() -> None:
        try:
            guard.clear_backend_errors()
        except SafetyStopActive as exc:
            raise SafetyStopActive(f"{exc}. clearerr clears the arm's errors, never the safety stop: check the arm, "
                                   "then POST /recover") from None

    @router.post("/clearerr", summary="Clear the arm's errors (not the safety stop)")
    def clearerr() -> PlainTextResponse:
        clear_errors()
        return _text("Clear")

    @router.post("/startimp", summary="The impedance controller always runs here: clears the arm's errors")
    def startimp() -> PlainTextResponse:
        clear_errors()
        return _text("Started impedance")

    @router.post("/stopimp", summary="Refused: the controller runs as long as the server", responses=_NOT_IMPLEMENTED)
    def stopimp() -> PlainTextResponse:
        raise HTTPException(501, "stopimp: this server's impedance controller runs as long as the server does; "
                                 "stop the server to release the arm")

    @router.post("/jointreset", summary="Blocking joint move to the server's home joints; commands get 409 meanwhile")
    def jointreset() -> PlainTextResponse:
        guard.joint_reset(None, config.joint_reset_s)
        return _text("Reset Joint")

    def gripper_route(path: str, width: float, answer: str, summary: str) -> None:
        def command() -> PlainTextResponse:
            guard.set_gripper(width)
            return _text(answer)

        router.add_api_route(path, command, methods=["POST"], summary=summary)

    gripper_route("/open_gripper", MAX_GRIPPER_WIDTH, "Opened", "Open the hand")
    gripper_route("/close_gripper", 0.0, "Closed", "Close (grasp)")
    gripper_route("/close_gripper_slow", 0.0, "Closed", "Close (HIL-SERL); the fingers move at the hand's speed")

    @router.post("/move_gripper", summary="Robotiq scale: 0 open .. 255 closed")
    def move_gripper(body: JsonBody = Body(None)) -> PlainTextResponse:
        position = _number(body or {}, "gripper_pos")
        if not 0 <= position <= 255:
            raise CommandRejected("gripper_pos", f"gripper_pos: expected 0 (open) .. 255 (closed), got {position}")
        guard.set_gripper(MAX_GRIPPER_WIDTH * (1.0 - position / 255.0))
        return _text("Moved Gripper")

    @router.post("/activate_gripper", summary="No-op: the Franka hand needs no activation")
    def activate_gripper() -> PlainTextResponse:
        return _text("Activated")

    @router.post("/reset_gripper", summary="No-op: the Franka hand needs no activation")
    def reset_gripper() -> PlainTextResponse:
        return _text("Reset")

    @router.post("/set_load", summary="Payload model (HIL-SERL); refused where the backend has none",
                 responses=_NOT_IMPLEMENTED)
    def set_load(body: JsonBody = Body(None)) -> PlainTextResponse:
        body = body or {}
        mass = _number(body, "mass")
        center, inertia = _numbers(body, "F_x_center_load", 3), _numbers(body, "load_inertia", 9)
        try:
            guard.set_load(mass, center, inertia)
        except NotSupported as exc:
            raise HTTPException(501, f"set_load: {exc}; nothing was changed") from None
        return _text("Set load")

    return router


def _getter(serl_state: Callable[[], dict], key: str) -> Callable[[], dict]:
    def getter() -> dict[str, Any]:
        return {key: serl_state()[key]}

    getter.__name__ = f"get_{key}"
    return getter


def map_update_param(current: ImpedanceParams, body: dict) -> ImpedanceParams:
    """SERL's flat, partial compliance parameters onto ``current`` (what is left out keeps its value).

    Each clip side is its own parameter, as in SERL's controller; unknown keys and non-numbers raise
    ``CommandRejected``; ranges are the guard's (``limits.py``).
    """
    if not isinstance(body, dict):
        raise CommandRejected("body", "body: expected a JSON object of SERL compliance parameters")
    unknown = sorted(set(body) - set(UPDATE_PARAM_KEYS))
    if unknown:
        raise CommandRejected(unknown[0], f"{unknown[0]}: unknown parameter; SERL's controller has {list(UPDATE_PARAM_KEYS)}")
    values = {key: _number(body, key) for key in body}
    trans_damping, rot_damping = current.damping()
    fields: dict[str, Any] = {
        "translational_stiffness": np.asarray(current.translational_stiffness, float),
        "rotational_stiffness": np.asarray(current.rotational_stiffness, float),
        "translational_damping": trans_damping, "rotational_damping": rot_damping,
        "nullspace_stiffness": current.nullspace_stiffness,
        "joint1_nullspace_stiffness": current.joint1_nullspace_stiffness,
    }
    for key in (*_GAINS, *_SCALARS):
        if key in values:
            fields[key] = np.full(3, values[key]) if key in _GAINS else values[key]
    for key in _INTEGRAL:
        if key in values:
            fields[key.lower()] = np.full(3, values[key])
    for kind in ("translational", "rotational"):
        clip = np.array(getattr(current, f"{kind}_clip"), dtype=float)
        neg = getattr(current, f"{kind}_clip_neg")
        neg = clip.copy() if neg is None else np.array(neg, dtype=float)
        for key, (key_kind, negative, axis) in _CLIPS.items():
            if key_kind == kind and key in values:
                (neg if negative else clip)[axis] = values[key]
        fields[f"{kind}_clip"] = clip
        fields[f"{kind}_clip_neg"] = None if np.array_equal(neg, clip) else neg
    return dataclasses.replace(current, **fields)
