"""``HttpRobotClient``: the ``RobotClient`` that speaks the robot server's HTTP API.

One keep-alive connection (the standard library's ``http.client``: a fraction of the CPU per request
of a full-featured client, which matters at the control rate). ``observe()`` reads state and all
camera frames in one round trip and ``step()`` sends a target, advances a lockstep twin (or lets a
real-time one wait out the period) and observes in one; the plain ``state()``/``images()`` calls exist too. A dropped connection or a restarted server raises
``RobotConnectionError``; the next call reconnects (so the env's next ``reset()`` works).
"""

from __future__ import annotations

from typing import Any

import http.client
import json as _json
import select
import urllib.parse

import numpy as np

from robot_servers.backends.base import ImpedanceParams, RobotState
from robot_servers.guard import ArmBusy, CommandRejected, GuardError, NotSupported, RobotFault, SafetyStopActive
from robot_servers.http.middleware import SESSION_HEADER
from robot_servers.wire import decode_images, unpackb
from serl.envs.robot_client import RobotClient

# The guard's refusals, as the server names them in a 409 body, raised here as the same exceptions.
_CONFLICTS: dict[str, type[GuardError]] = {"SafetyStopActive": SafetyStopActive, "RobotFault": RobotFault,
                                            "ArmBusy": ArmBusy}


class _Response:
    """Status, lower-cased headers and body of one answered request."""

    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes):
        self.status_code, self.headers, self.content = status_code, headers, content

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return _json.loads(self.content)


def _peer_closed(sock) -> bool:
    """An idle keep-alive socket that polls readable has been closed by the server (EOF)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class RobotConnectionError(ConnectionError):
    """The robot server cannot be reached, or restarted since the last call (episode state is lost)."""


class RobotServerError(RuntimeError):
    """The server answered with an error the guard did not raise (e.g. a failing camera)."""


class HttpRobotClient(RobotClient):
    """``RobotClient`` over HTTP. ``token`` is sent as a bearer token; ``timeout`` bounds every request (s)."""

    waits_remotely = True

    def __init__(self, url: str = "http://127.0.0.1:5000", token: str | None = None, timeout: float = 2.0):
        self.url = url.rstrip("/")
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url: expected http://host:port or https://host:port, got {url!r}")
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._base_path = parts.path.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session: str | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._scene: dict[str, np.ndarray] | None = None
        self._read_health(self.health())

    # -- transport
    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is not None and self._conn.sock is not None and _peer_closed(self._conn.sock):
            self._drop_connection()  # the server closed the idle keep-alive connection: open a new one
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self.timeout)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _request(self, method: str, path: str, json: Any = None, timeout: float | None = None) -> _Response:
        headers = dict(self._headers)
        if self._session:
            headers[SESSION_HEADER] = self._session
        body = None
        if json is not None:
            body = _json.dumps(json, allow_nan=False).encode()
            headers["Content-Type"] = "application/json"
        self._scene = None  # any request may change the scene
        try:
            conn = self._connection()
            if conn.sock is None:
                conn.connect()
            conn.sock.settimeout(self.timeout if timeout is None else timeout)
            conn.request(method, self._base_path + path, body=body, headers=headers)
            raw = conn.getresponse()
            response = _Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, raw.read())
        except (OSError, http.client.HTTPException) as exc:
            self._drop_connection()
            self._session = None  # this error already ended the episode; accept whichever server answers next
            raise RobotConnectionError(
                f"robot server at {self.url} unreachable during {method} {path}: {exc!r}; "
                "the next call reconnects (reset the env once the server is back)") from exc
        session = response.headers.get(SESSION_HEADER)
        if self._session is not None and session is not None and session != self._session:
            self._session = session
            raise RobotConnectionError(
                f"robot server at {self.url} restarted (new session {session}); the episode state is lost — "
                "reset the env; the next call talks to the new server")
        self._session = session or self._session
        if response.status_code >= 400:
            self._raise_for(response, method, path)
        return response

    def _raise_for(self, response: _Response, method: str, path: str) -> None:
        try:
            body = response.json()
        except ValueError:
            body = response.text
        message = body.get("message") or body.get("detail") if isinstance(body, dict) else body
        if isinstance(message, list):
            message = "; ".join(_describe(item) for item in message)
        where = f"{method} {path} -> {response.status_code}"
        if response.status_code == 422:
            field = _first_field(body)
            raise CommandRejected(field, f"{message} ({where})")
        if response.status_code in (401, 403):
            raise PermissionError(f"{message} ({where})")
        if response.status_code == 404 and path == "/health":
            raise RobotServerError(
                f"{self.url} has no /health ({where}): it is not this suite's robot server. If it is a SERL or "
                "HIL-SERL Flask server (franka_server.py), run with --env.robot-api serl (or hil-serl); if it is ours "
                "with --serl-api, leave /serl/ out of the URL")
        if response.status_code == 404:
            raise NotSupported(f"the robot server has no {path} ({where}): {message}")
        if response.status_code == 409 and isinstance(body, dict) and body.get("error") in _CONFLICTS:
            raise _CONFLICTS[body["error"]](f"{message} ({where})")
        raise RobotServerError(f"{message} ({where})")

    @staticmethod
    def _unpack(response: _Response) -> dict[str, Any]:
        return unpackb(response.content, "robot server response")

    def reconnect(self) -> None:
        """Start afresh with whichever server answers now (the env calls it on the reset after an error)."""
        self._drop_connection()
        self._session = None
        self._read_health(self.health())

    def _read_health(self, health: dict[str, Any]) -> None:
        self.lockstep = bool(health["lockstep"])
        self.simulation = health.get("simulation")
        self.pair = health.get("pair")

    # -- RobotClient
    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health").json()

    def state(self) -> RobotState:
        return RobotState.from_dict(self._request("GET", "/state").json())

    def set_target(self, pose, gripper=None) -> None:
        body = {"pose": _floats(pose, "pose")}
        if gripper is not None:
            body["gripper"] = _floats([gripper], "gripper")[0]
        self._request("POST", "/target", body)

    def set_targets(self, targets) -> float:
        if self.pair is None:
            return super().set_targets(targets)
        body = {"targets": {arm: {"pose": _floats(pose, f"targets.{arm}.pose"),
                                  **({} if gripper is None else {"gripper": _floats([gripper], "gripper")[0]})}
                            for arm, (pose, gripper) in targets.items()}}
        return float(self._request("POST", "/pair/target", body).json()["skew_s"])

    def set_gripper(self, width) -> None:
        self._request("POST", "/gripper", {"width": _floats([width], "width")[0]})

    def set_impedance(self, params: ImpedanceParams) -> None:
        try:
            params = params.validate()
        except ValueError as exc:
            raise CommandRejected.from_error(exc) from None
        self._request("POST", "/impedance", params.to_dict())

    def joint_reset(self, q=None, duration: float = 3.0) -> None:
        body = {"duration": float(duration), "q": None if q is None else _floats(q, "q")}
        self._request("POST", "/joint_reset", body, timeout=self.timeout + float(duration) + 5.0)

    def recover(self) -> None:
        self._request("POST", "/recover")

    def safety_stop(self, reason: str) -> None:
        self._request("POST", "/safety_stop", {"reason": reason})

    def images(self) -> dict[str, tuple[np.ndarray, float]]:
        return decode_images(self._unpack(self._request("GET", "/images")))

    def observe(self) -> tuple[RobotState, dict[str, tuple[np.ndarray, float]]]:
        """State and every camera's newest frame in one round trip."""
        payload = self._unpack(self._request("GET", "/observe"))
        return RobotState.from_dict(payload["state"]), decode_images(payload["images"])

    def step(self, pose=None, gripper: float | None = None, advance: float | None = None,
             images: bool = True, wait: float | None = None,
             scene: bool = False) -> tuple[RobotState, dict[str, tuple[np.ndarray, float]]]:
        """Target (optional), advance (lockstep) or wait (real time), then observe — one round trip."""
        body: dict[str, Any] = {"images": images, "scene": scene}
        if pose is not None:
            body["pose"] = _floats(pose, "pose")
        if gripper is not None:
            body["gripper"] = float(gripper)
        if advance is not None:
            body["advance"] = float(advance)
        if wait is not None:
            body["wait"] = max(0.0, float(wait))
        timeout = self.timeout + (advance or 0.0) * 10 + (wait or 0.0)
        payload = self._unpack(self._request("POST", "/step", body, timeout=timeout))
        if payload.get("scene") is not None:
            self._scene = {name: np.asarray(pose, dtype=np.float64) for name, pose in payload["scene"].items()}
        return RobotState.from_dict(payload["state"]), decode_images(payload["images"])

    def advance(self, seconds: float) -> None:
        if not self.lockstep:
            return super().advance(seconds)
        self._request("POST", "/sim/advance", {"seconds": float(seconds)}, timeout=self.timeout + float(seconds) * 10)

    def scene(self) -> dict[str, np.ndarray]:
        if self._scene is not None:  # folded into the last /step, and nothing was commanded since
            return {name: pose.copy() for name, pose in self._scene.items()}
        return {name: np.asarray(pose, dtype=np.float64) for name, pose in self._request("GET", "/sim/scene").json().items()}

    def reset_robot(self, q=None) -> None:
        try:
            self._request("POST", "/sim/reset_robot", {"q": None if q is None else _floats(q, "q")})
        except NotSupported:
            return super().reset_robot(q)  # a real arm: the env falls back to a joint reset

    def reset_scene(self, seed: int | None = None) -> None:
        self._request("POST", "/sim/reset_scene", {"seed": None if seed is None else int(seed)})

    def close(self) -> None:
        self._drop_connection()

    def __enter__(self) -> "HttpRobotClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _first_field(body: Any) -> str:
    """The field a 422 names first (pydantic-style ``detail`` list), or "body"."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        loc = [str(part) for part in detail[0].get("loc", ()) if part not in ("body", "query")]
        if loc:
            return loc[0]
    return "body"


def _describe(error: Any) -> str:
    """One pydantic-style error as "field: message"."""
    if not isinstance(error, dict):
        return str(error)
    loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "query")]
    return f"{'.'.join(loc) or 'body'}: {error.get('msg', '')}"


def _floats(values, field: str) -> list[float]:
    """Plain floats for JSON (which has no NaN/inf: those are refused here, naming the field)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise CommandRejected(field, f"{field}: expected a flat sequence of numbers, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise CommandRejected(field, f"{field}: values must be finite, got {arr.tolist()}")
    return arr.tolist()
