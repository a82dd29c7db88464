"""``SerlHttpBackend``: a lab's existing SERL / HIL-SERL Flask robot server (``franka_server.py``) as a Backend.

Put a ``RobotGuard`` in front of it (``LocalRobot`` in the env, or ``serl serve --backend serl-http``)
and every command, reset hooks included, passes the task's safety box on this side: a SERL server
has no box, no watchdog and reports no faults, which ``missing_features`` says at start-up.

Conversions: quaternions re-signed to w ≥ 0, the end-effector-frame wrench rotated into the base
frame, the hand as SERL drives it (binary open/close; ``gripper_pos`` read in the flavor's scale),
one gain for all three axes (SERL's ``update_param`` takes a scalar), the joint reset to the joints
the SERL server was started with.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import urllib.parse
from typing import Any, Literal

import numpy as np

from robot_servers.backends.base import Backend, ImpedanceParams, RobotState
from robot_servers.control.pose import normalize_quat, quat_to_matrix
from robot_servers.limits import MAX_GRIPPER_WIDTH, validate_gripper, validate_pose

log = logging.getLogger("robot_servers.serl_http")

JOINT_RESET_DEADLINE_S = 90.0  # SERL restarts its controllers around the move and waits up to 30 s for it
DEFAULT_TORQUE_RATE = ImpedanceParams().torque_rate_limit


class SerlServerError(RuntimeError):
    """The SERL server failed (5xx, a body it should not send) or refused while stopped (409)."""


class SerlCommandRefused(ValueError):
    """The SERL server refused the command as bad input (4xx); nothing moved."""


class SerlHttpBackend(Backend):
    """One SERL Flask server at ``url`` (e.g. ``http://172.16.0.1:5000/``)."""

    name = "serl-http"

    def __init__(self, url: str = "http://127.0.0.1:5000/", flavor: Literal["serl", "hil-serl"] = "serl",
                 timeout: float = 2.0):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"url: expected http://host:port/ of a SERL server, got {url!r}")
        if flavor not in ("serl", "hil-serl"):
            raise ValueError(f"flavor: expected 'serl' or 'hil-serl', got {flavor!r}")
        self.url, self.flavor, self.timeout = url, flavor, float(timeout)
        self._host, self._port = parts.hostname, parts.port or 80
        self._path = parts.path.rstrip("/") + "/"
        self._lock = threading.Lock()  # one connection, shared by the env and the guard's monitor thread
        self._conn: http.client.HTTPConnection | None = None
        self._target: np.ndarray | None = None
        self._gripper_closed: bool | None = None
        self.state()  # fails now, naming the URL, when no SERL server answers there

    def missing_features(self) -> list[str]:
        """What a SERL server does not do that our own robot server does."""
        return ["no server-side safety box (the guard on this side clips every command to the task's box)",
                "no server-side watchdog (the guard on this side holds the arm while its process runs)",
                "no fault reporting (errors are cleared with /clearerr before every pose, as SERL does)",
                "no simulated time, ground-truth scene or instant resets",
                "the joint reset goes to the joints the SERL server was started with"]

    # -- transport
    def _post(self, route: str, body: Any = None, timeout: float | None = None) -> bytes:
        payload = None if body is None else json.dumps(body, allow_nan=False).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        with self._lock:
            for attempt in (0, 1):  # Flask's development server may close the connection after each answer
                try:
                    if self._conn is None:
                        self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
                    self._conn.timeout = self.timeout if timeout is None else timeout
                    if self._conn.sock is not None:
                        self._conn.sock.settimeout(self._conn.timeout)
                    self._conn.request("POST", self._path + route, body=payload, headers=headers)
                    response = self._conn.getresponse()
                    content = response.read()
                    break
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                    self._close_connection()
                    if attempt:
                        raise ConnectionError(f"SERL server at {self.url} closed the connection on /{route}") from exc
                except OSError as exc:
                    self._close_connection()
                    raise ConnectionError(f"SERL server at {self.url} unreachable on /{route}: {exc!r}") from exc
        if response.status >= 400:
            error = SerlCommandRefused if 400 <= response.status < 500 and response.status != 409 else SerlServerError
            raise error(f"SERL server at {self.url}: /{route} -> {response.status}: "
                                  f"{content[:300].decode(errors='replace')}")
        return content

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- Backend
    def state(self) -> RobotState:
        raw = json.loads(self._post("getstate"))
        try:
            pose = np.asarray(raw["pose"], dtype=np.float64)
            pose = np.concatenate([pose[:3], normalize_quat(pose[3:])])
            to_base = quat_to_matrix(pose[3:])
            wrench = np.concatenate([to_base @ np.asarray(raw["force"], float), to_base @ np.asarray(raw["torque"], float)])
            gripper = float(np.asarray(raw["gripper_pos"], dtype=np.float64).reshape(-1)[0])
            state = RobotState(
                tcp_pose=pose, tcp_vel=np.asarray(raw["vel"], dtype=np.float64), wrench=wrench,
                q=np.asarray(raw["q"], dtype=np.float64), dq=np.asarray(raw["dq"], dtype=np.float64),
                gripper_width=self._width(gripper),
                target_pose=pose.copy() if self._target is None else self._target.copy(),
                errors=[str(error) for error in raw.get("errors", ())],  # SERL's own server reports none
                timestamp=time.monotonic())
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise SerlServerError(f"SERL server at {self.url}: /getstate answered an unexpected body: {exc!r}") from None
        if state.tcp_pose.shape != (7,) or state.q.shape != (7,) or state.tcp_vel.shape != (6,):
            raise SerlServerError(f"SERL server at {self.url}: /getstate answered arrays of the wrong size")
        return state

    def _width(self, gripper_pos: float) -> float:
        width = gripper_pos if self.flavor == "serl" else gripper_pos * MAX_GRIPPER_WIDTH
        return float(np.clip(width, 0.0, MAX_GRIPPER_WIDTH))

    def set_target(self, pose, gripper=None) -> None:
        pose = validate_pose(pose, "pose")
        width = None if gripper is None else validate_gripper(gripper, "gripper")
        self._post("clearerr")  # as SERL's own env: its controller may have stopped on a reflex
        self._post("pose", {"arr": pose.tolist()})
        self._target = pose
        if width is not None:
            self.set_gripper(width)

    def set_gripper(self, width) -> None:
        """SERL's hand is binary: below half open closes (grasps), otherwise opens; repeats are not resent."""
        closed = validate_gripper(width, "width") < MAX_GRIPPER_WIDTH / 2
        if closed != self._gripper_closed:
            self._post("close_gripper" if closed else "open_gripper")
            self._gripper_closed = closed

    def set_impedance(self, params: ImpedanceParams) -> None:
        self._post("update_param", serl_compliance(params))

    def joint_reset(self, q=None, duration: float = 3.0) -> None:
        if q is not None:
            raise ValueError("q: a SERL server resets to the joints it was started with; send q=None")
        self._post("jointreset", timeout=JOINT_RESET_DEADLINE_S)
        self._target = None

    def recover(self) -> None:
        self._post("clearerr")

    def close(self) -> None:
        with self._lock:
            self._close_connection()


def serl_compliance(params: ImpedanceParams) -> dict[str, float]:
    """``ImpedanceParams`` as SERL's flat ``update_param`` body; ValueError where SERL cannot express it."""
    params = params.validate()
    trans_damping, rot_damping = params.damping()
    body: dict[str, float] = {}
    for name, values in (("translational_stiffness", params.translational_stiffness),
                         ("rotational_stiffness", params.rotational_stiffness),
                         ("translational_damping", trans_damping), ("rotational_damping", rot_damping),
                         ("translational_ki", params.translational_ki), ("rotational_ki", params.rotational_ki)):
        values = np.asarray(values, dtype=np.float64)
        if not np.allclose(values, values[0]):
            raise ValueError(f"{name}: a SERL server takes one value for all three axes, got {values.tolist()}")
        body[name.replace("_ki", "_Ki")] = float(values[0])  # SERL's spelling
    low, high = params.clip_bounds()
    for offset, kind in ((0, "translational"), (3, "rotational")):
        for i, axis in enumerate("xyz"):
            body[f"{kind}_clip_{axis}"] = float(high[offset + i])
            body[f"{kind}_clip_neg_{axis}"] = float(-low[offset + i])
    body["nullspace_stiffness"] = float(params.nullspace_stiffness)
    body["joint1_nullspace_stiffness"] = float(params.joint1_nullspace_stiffness)
    if params.torque_rate_limit != DEFAULT_TORQUE_RATE:
        log.warning("torque_rate_limit=%g is not settable on a SERL server (its controller fixes 1 Nm per tick)",
                    params.torque_rate_limit)
    return body
