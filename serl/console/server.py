"""The training console's web server: the page, its static files, the learning curves and one WebSocket.

FastAPI + uvicorn on a background thread. The actor only touches the ``ConsoleHub``; everything here (JSON,
JPEG encoding, sockets) runs on the server's own threads, so a slow or absent page never delays a step.

WebSocket ``/ws`` (the token, when set, as ``?token=`` or the cookie the page gets from ``/?token=``):

- server → page, text: ``{"type": "hello", "client", "commands", "teleop_timeout_s", "max_fps"}`` once;
  ``{"type": "state", "seq", "view", "learner", "teleop": {"holder", "live", "you_hold"}, "paused",
  "server_time", "age_s"}`` for each newer step (at most ``max_fps`` a second) and whenever the teleop holder
  or the pause changes; ``{"type": "teleop", "holder", "granted", "server_time"}`` after a claim or release;
  ``{"type": "ok", "name"}`` after a command; ``{"type": "error", "error"}`` for a message it refused.
- server → page, binary: one camera frame: a 4-byte big-endian header length, a JSON header
  ``{"type": "frame", "camera", "kind": "policy" | "full", "seq", "time", "width", "height"}``, then the JPEG.
- page → server, text: ``{"type": "command", "name": <ConsoleHub COMMANDS>}``, ``{"type": "claim_teleop"}``,
  ``{"type": "release_teleop"}``, ``{"type": "teleop", "twist": [6 numbers in -1..1],
  "gripper": "open" | "close" | null, "active": bool}``, with ``"arm": "left" | "right"`` (which arm the page
  drives) on a two-arm robot.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import hmac
import io
import itertools
import json
import logging
import math
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np
from fastapi import FastAPI, HTTPException, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from serl.console.hub import COMMANDS, ConsoleHub, StepView
from serl.devices.base import TeleopCommand
from serl.devices.two_arms import drive_button
from serl.envs.dual_franka_env import ARMS

log = logging.getLogger("serl.console")

STATIC_DIR = Path(__file__).parent / "static"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
TOKEN_COOKIE = "serl_console_token"
TOKEN_ENV = "SERL_CONSOLE_TOKEN"
MAX_MESSAGE_BYTES = 64 * 1024  # page messages are a few hundred bytes
MAX_CLIENTS = 16
KEEP_ALIVE_S = 5.0  # an HTTP connection idle this long is closed
REQUEST_TIMEOUT_S = 10.0  # a request must arrive whole within this (a WebSocket, once open, has no limit)
REFUSAL_EVERY_S = 1.0  # a page that streams teleop input it may not give is told so once a second, not 25 times


@dataclasses.dataclass(frozen=True)
class ConsoleConfig:
    """Where the console listens and what it sends."""

    host: str = "127.0.0.1"  # beyond loopback needs a token
    port: int = 8765  # 0 picks a free port
    token: str | None = None  # defaults to $SERL_CONSOLE_TOKEN when set
    enabled: bool = True
    teleop_timeout_s: float = 0.5  # browser teleop input older than this hands control back to the policy
    max_fps: float = 15.0  # state and frame messages per second and page, at most
    jpeg_quality: int = 80
    full_frames: bool = True  # also send full camera frames when the actor publishes them

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise ValueError(f"console port: expected 0..65535, got {self.port}")
        if not (math.isfinite(self.teleop_timeout_s) and self.teleop_timeout_s > 0):
            raise ValueError(f"console teleop_timeout_s: expected > 0 s, got {self.teleop_timeout_s}")
        if not (math.isfinite(self.max_fps) and self.max_fps > 0):
            raise ValueError(f"console max_fps: expected > 0, got {self.max_fps}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"console jpeg_quality: expected 1..100, got {self.jpeg_quality}")

    def hub(self) -> ConsoleHub:
        """A hub with this config's teleop timeout (the actor publishes into it, the server reads it)."""
        return ConsoleHub(teleop_timeout_s=self.teleop_timeout_s)


# ---- encoding ------------------------------------------------------------------------------------------

def _jpeg_encoder():
    """OpenCV's encoder when installed (faster), else Pillow's (a dependency of matplotlib and imageio)."""
    try:
        import cv2

        def encode(image: np.ndarray, quality: int) -> bytes:
            ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]),
                                    [int(cv2.IMWRITE_JPEG_QUALITY), quality])
            if not ok:
                raise ValueError("OpenCV could not encode the frame")
            return data.tobytes()
    except ImportError:
        from PIL import Image

        def encode(image: np.ndarray, quality: int) -> bytes:
            out = io.BytesIO()
            Image.fromarray(image).save(out, format="JPEG", quality=quality)
            return out.getvalue()
    return encode


def _as_rgb(frame: Any) -> np.ndarray | None:
    """An HxWx3 uint8 image from what a camera gave (grey, RGBA and float images too); None if it is none."""
    image = np.asarray(frame)
    if image.ndim == 4 and image.shape[0] == 1:  # a stacked single frame
        image = image[0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or image.size == 0:
        return None
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    image = image[..., :3]
    if image.dtype != np.uint8:
        scale = 255.0 if np.issubdtype(image.dtype, np.floating) and image.max(initial=0) <= 1.0 else 1.0
        image = np.clip(np.nan_to_num(image.astype(np.float32) * scale), 0, 255).astype(np.uint8)
    return image


def frame_message(header: dict[str, Any], jpeg: bytes) -> bytes:
    """One binary frame message: header length, JSON header, JPEG."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack(">I", len(head)) + head + jpeg


def parse_frame_message(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The header and JPEG of a binary frame message (for clients written in Python)."""
    (length,) = struct.unpack(">I", data[:4])
    return json.loads(data[4:4 + length]), data[4 + length:]


def jsonable(value: Any) -> Any:
    """``value`` as strict JSON takes it: numpy to Python, non-finite floats to None (the browser's
    ``JSON.parse`` refuses NaN)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def view_json(view: StepView | None) -> dict[str, Any] | None:
    """The step as the page shows it: every field but the frames, plus the camera names."""
    if view is None:
        return None
    out = {field.name: getattr(view, field.name) for field in dataclasses.fields(view)
           if field.name not in ("frames", "full_frames", "arms")}
    out["arms"] = {name: dataclasses.asdict(arm) for name, arm in view.arms.items()}
    out["cameras"] = sorted(view.frames)
    out["full_cameras"] = sorted(view.full_frames)
    return jsonable(out)


class FrameCache:
    """The JPEGs of the newest step, encoded once for all pages (on the caller's thread, never the actor's)."""

    def __init__(self, quality: int, full_frames: bool):
        self.quality = quality
        self.full_frames = full_frames
        self._encode = _jpeg_encoder()
        self._lock = threading.Lock()
        self._seq = -1
        self._messages: list[bytes] = []

    def messages(self, seq: int, view: StepView) -> list[bytes]:
        with self._lock:
            if seq != self._seq:
                self._messages = self._build(seq, view)
                self._seq = seq
            return self._messages

    def _build(self, seq: int, view: StepView) -> list[bytes]:
        kinds = [("policy", view.frames)] + ([("full", view.full_frames)] if self.full_frames else [])
        out = []
        for kind, frames in kinds:
            for camera, frame in sorted(frames.items()):
                image = _as_rgb(frame)
                if image is None:
                    continue
                header = {"type": "frame", "camera": str(camera), "kind": kind, "seq": seq, "time": view.time,
                          "width": int(image.shape[1]), "height": int(image.shape[0])}
                out.append(frame_message(header, self._encode(image, self.quality)))
        return out


# ---- page messages -------------------------------------------------------------------------------------

class MessageError(ValueError):
    """A page message the server refuses (the connection stays open)."""


def parse_page_message(text: str) -> dict[str, Any]:
    """A page message, checked; MessageError naming what is wrong."""
    try:
        message = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as err:
        raise MessageError(f"not JSON: {err}") from None
    if not isinstance(message, dict):
        raise MessageError("expected a JSON object with a 'type'")
    kind = message.get("type")
    allowed = {"command": {"type", "name"}, "claim_teleop": {"type"}, "release_teleop": {"type"},
               "teleop": {"type", "twist", "gripper", "active", "arm"}}
    if kind not in allowed:
        raise MessageError(f"unknown message type {kind!r}; expected one of {sorted(allowed)}")
    extra = set(message) - allowed[kind]
    if extra:
        raise MessageError(f"{kind}: unexpected field(s) {sorted(extra)}")
    if kind == "command" and message.get("name") not in COMMANDS:
        raise MessageError(f"command: unknown name {message.get('name')!r}; expected one of {list(COMMANDS)}")
    if kind == "teleop":
        twist = message.get("twist")
        if not isinstance(twist, list) or len(twist) != 6:
            raise MessageError("teleop: 'twist' must be a list of 6 numbers")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in twist):
            raise MessageError("teleop: 'twist' must hold numbers only")
        if not all(math.isfinite(v) and -1.0 <= v <= 1.0 for v in twist):
            raise MessageError("teleop: 'twist' values must be finite and within [-1, 1]")
        if message.get("gripper") not in ("open", "close", None):
            raise MessageError("teleop: 'gripper' must be 'open', 'close' or null")
        if not isinstance(message.get("active"), bool):
            raise MessageError("teleop: 'active' must be true or false")
        if message.get("arm") not in (None, *ARMS):
            raise MessageError(f"teleop: 'arm' must be one of {list(ARMS)} or absent")
    return message


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


# ---- auth ----------------------------------------------------------------------------------------------

def _scope_token(scope) -> bytes | None:
    """The token a request carries: bearer header, ``?token=`` or the console's cookie."""
    headers = dict(scope.get("headers") or [])
    auth = headers.get(b"authorization")
    if auth:
        scheme, _, credential = auth.partition(b" ")
        if scheme.lower() == b"bearer":
            return credential.strip()
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return query["token"][0].encode()
    for part in headers.get(b"cookie", b"").split(b";"):
        name, _, value = part.strip().partition(b"=")
        if name == TOKEN_COOKIE.encode():
            return value
    return None


def _host_name(host: bytes) -> str:
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class ConsoleAuthMiddleware:
    """Pure ASGI, on every path and the WebSocket: the token (when set), compared in constant time.

    Without a token (loopback only) the Host must be a loopback name, so a web page elsewhere cannot reach
    the console through DNS rebinding. A WebSocket from a page of another origin is refused either way.
    """

    def __init__(self, app, token: str | None):
        self.app = app
        self.token = None if token is None else token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        reason = None
        if self.token is not None:
            given = _scope_token(scope)
            if given is None:
                reason = (401, ("missing console token: open the page as /?token=<token> "
                                "(or send 'Authorization: Bearer <token>')"))
            elif not hmac.compare_digest(given, self.token):
                reason = (403, "invalid console token")
        elif _host_name(headers.get(b"host", b"")) not in LOOPBACK:
            reason = (403, "this console serves loopback names only (set a token to serve other hosts)")
        if reason is None and scope["type"] == "websocket":
            origin = headers.get(b"origin")
            if origin is not None and origin.split(b"://", 1)[-1].lower() != headers.get(b"host", b"").lower():
                reason = (403, "WebSocket from another origin")
        if reason is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            return await send({"type": "websocket.close", "code": 1008, "reason": reason[1][:120]})
        body = json.dumps({"detail": reason[1]}).encode()
        head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if reason[0] == 401:
            head.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": reason[0], "headers": head})
        await send({"type": "http.response.body", "body": body})


# ---- the app -------------------------------------------------------------------------------------------

def _curves_module():
    try:
        from serl.console import curves
    except ImportError:
        return None
    return curves


def _runs(root: Path) -> list[dict[str, Any]]:
    """``list_runs(root)``, each with ``id`` (its path under ``root``): the page picks earlier runs by id,
    and the server reads only runs it listed, never a path a page names."""
    curves = _curves_module()
    if curves is None or not hasattr(curves, "list_runs") or not root.is_dir():
        return []
    out = []
    for run in curves.list_runs(root):
        entry = dict(run) if isinstance(run, dict) else {"path": str(run)}
        path = root / str(entry.get("path") or entry.get("name") or "")
        entry["id"] = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        entry["dir"] = str(path.resolve())
        out.append(jsonable(entry))
    return out


def create_app(hub: ConsoleHub, config: ConsoleConfig, run_dir: Path | None, token: str | None,
               runs_root: Path | None = None):
    """The console's FastAPI app over ``hub`` (curves from ``run_dir``, earlier runs under ``runs_root``)."""
    run_dir = None if run_dir is None else Path(run_dir)
    if runs_root is None and run_dir is not None:
        runs_root = run_dir.parent.parent  # runs/<task>/<run>
    runs_root = None if runs_root is None else Path(runs_root)
    app = FastAPI(title="serl console", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    frames = FrameCache(config.jpeg_quality, config.full_frames)
    waits = concurrent.futures.ThreadPoolExecutor(MAX_CLIENTS + 2, thread_name_prefix="console-wait")
    encoders = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="console-jpeg")
    app.state.executors = (waits, encoders)
    client_ids = itertools.count(1)
    clients: set[str] = set()
    wakeups: dict[str, asyncio.Event] = {}

    def wake_all() -> None:
        for event in wakeups.values():
            event.set()

    @app.get("/")
    def index():
        response = FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-store"})
        if token is not None:  # the middleware has checked it: keep it for the page's own requests
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.get("/api/state")
    def state():
        seq, view, learner = hub.latest()
        return JSONResponse(_state(hub, seq, view, learner, None))

    @app.get("/api/curves")
    def curves(run: str | None = None):
        module = _curves_module()
        if module is None or not hasattr(module, "read_curves"):
            return JSONResponse({})
        if run is None:
            if run_dir is None or not run_dir.exists():
                return JSONResponse({})
            return JSONResponse(jsonable(module.read_curves(run_dir)))
        match = [entry for entry in (_runs(runs_root) if runs_root is not None else []) if entry["id"] == run]
        if not match:
            raise HTTPException(404, f"no run {run!r} (see /api/runs)")
        return JSONResponse(jsonable(module.read_curves(Path(match[0]["dir"]))))

    @app.get("/api/runs")
    def runs():
        current = None if run_dir is None else str(run_dir.resolve())
        listed = [] if runs_root is None else _runs(runs_root)
        shown = [{k: v for k, v in entry.items() if k != "dir"} for entry in listed if entry["dir"] != current]
        return JSONResponse({"current": None if run_dir is None else run_dir.name, "runs": shown})

    @app.api_route("/summary.png", methods=["GET", "HEAD"])
    def summary():
        path = None if run_dir is None else run_dir / "summary.png"
        if path is None or not path.is_file():
            raise HTTPException(404, "no summary.png yet (it is written when the run ends)")
        return FileResponse(path, media_type="image/png", headers={"cache-control": "no-store"})

    @app.websocket("/ws")
    async def ws(socket_: WebSocket):
        if len(clients) >= MAX_CLIENTS:
            await socket_.close(code=1013, reason="too many console pages open")
            return
        await socket_.accept()
        client = f"page-{next(client_ids)}"
        if socket_.client is not None:
            client += f"@{socket_.client.host}"
        clients.add(client)
        wakeup = wakeups[client] = asyncio.Event()
        sender = asyncio.create_task(_send_loop(socket_, client, wakeup))
        try:
            await socket_.send_text(json.dumps({
                "type": "hello", "client": client, "commands": list(COMMANDS),
                "teleop_timeout_s": hub.teleop_timeout_s, "max_fps": config.max_fps}))
            refused_at = 0.0
            while True:
                received = await socket_.receive()
                if received["type"] == "websocket.disconnect":
                    break
                try:
                    if received.get("text") is None:
                        raise MessageError("expected a text message holding JSON")
                    message = parse_page_message(received["text"])
                except MessageError as err:
                    await socket_.send_text(json.dumps({"type": "error", "error": str(err)}))
                    continue
                reply = _handle(hub, client, message)
                if reply is None:
                    continue
                if reply.get("refused"):
                    now = time.monotonic()
                    if now - refused_at < REFUSAL_EVERY_S:
                        continue
                    refused_at = now
                    reply = {"type": "error", "error": reply["error"]}
                else:
                    wake_all()  # every page shows the new holder or pause at once
                await socket_.send_text(json.dumps(reply))
        except (WebSocketDisconnect, RuntimeError):
            pass  # the page left while a reply was on its way
        finally:
            hub.release_teleop(client)
            clients.discard(client)
            wakeups.pop(client, None)
            sender.cancel()
            wake_all()

    async def _send_loop(socket_: WebSocket, client: str, wakeup: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        seq, period, shown, shown_learner = 0, 1.0 / config.max_fps, None, None
        due = sent_at = 0.0
        wait = woken = None
        try:
            while True:
                if wait is None:
                    wait = loop.run_in_executor(waits, hub.wait_newer, seq, 0.25)
                woken = asyncio.ensure_future(wakeup.wait())
                await asyncio.wait({wait, woken}, return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                wakeup.clear()
                if wait.done():
                    newest, view, learner = wait.result()
                    wait = None
                else:  # a holder or pause change: show it now, the step wait goes on
                    newest, view, learner = hub.latest()
                control = (hub.teleop_holder, hub.teleop_command() is not None, hub.paused)
                # between steps (a held or paused robot) the learner's news still goes out, once a second
                learner_news = learner != shown_learner and time.monotonic() - sent_at >= 1.0
                if newest == seq and control == shown and not learner_news:
                    continue
                state = _state(hub, newest, view, learner, client)
                await socket_.send_text(json.dumps(state))
                shown, shown_learner, sent_at = control, learner, time.monotonic()
                if newest != seq and view is not None:
                    messages = await loop.run_in_executor(encoders, frames.messages, newest, view)
                    for message in messages:
                        await socket_.send_bytes(message)
                seq = newest
                # the frame-rate cap: the next step sent is the newest one after the pause
                now = time.monotonic()
                due = max(due + period, now)
                if due > now:
                    await asyncio.sleep(due - now)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a socket that closed under the send ends this page's stream only
            log.debug("console stream to %s ended: %s", client, err)
        finally:
            if woken is not None:
                woken.cancel()

    return app


def _state(hub: ConsoleHub, seq: int, view: StepView | None, learner: dict, client: str | None) -> dict[str, Any]:
    holder = hub.teleop_holder
    now = time.time()
    return {
        "type": "state", "seq": seq, "view": view_json(view), "learner": jsonable(learner),
        "teleop": {"holder": holder, "live": hub.teleop_command() is not None,
                   "you_hold": client is not None and holder == client},
        "paused": hub.paused, "server_time": now, "age_s": None if view is None else now - view.time,
    }


def _handle(hub: ConsoleHub, client: str, message: dict[str, Any]) -> dict[str, Any] | None:
    """Apply one checked page message to the hub; the reply for the page (None: none)."""
    kind = message["type"]
    if kind == "command":
        hub.command(message["name"])
        return {"type": "ok", "name": message["name"]}
    if kind == "claim_teleop":
        granted = hub.claim_teleop(client)
        if granted:  # an idle input marks the claim fresh, so no other page takes it before the first key
            hub.teleop_input(client, TeleopCommand.idle())
        return {"type": "teleop", "holder": hub.teleop_holder, "granted": granted, "server_time": time.time()}
    if kind == "release_teleop":
        hub.release_teleop(client)
        return {"type": "teleop", "holder": hub.teleop_holder, "granted": False, "server_time": time.time()}
    arm = message.get("arm")
    command = TeleopCommand(np.asarray(message["twist"], dtype=np.float64), message["gripper"],
                            {drive_button(arm): True} if arm else {}, active=message["active"],
                            timestamp=time.monotonic())
    if not hub.teleop_input(client, command):
        return {"refused": True, "error": f"the teleop is held by {hub.teleop_holder or 'nobody'}: "
                                          "claim it first; this input is ignored"}
    return None


# ---- the server ----------------------------------------------------------------------------------------

class ConsoleServer:
    """The console on its own uvicorn thread: ``start()`` returns the URL, ``close()`` stops it.

    ``page_url`` is the URL to open (with ``?token=`` when a token is set).
    """

    def __init__(self, hub: ConsoleHub, config: ConsoleConfig = ConsoleConfig(), run_dir: Path | None = None,
                 runs_root: Path | None = None):
        self.hub = hub
        self.config = config
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.token = config.token or os.environ.get(TOKEN_ENV) or None
        if config.host not in LOOPBACK and not self.token:
            raise ValueError(f"console host {config.host!r} is beyond loopback: anyone who reaches it could move "
                             f"the robot. Set a token (--console.token or ${TOKEN_ENV}), or keep 127.0.0.1 "
                             "and use an SSH tunnel")
        self.runs_root = runs_root
        self.url: str | None = None
        self._server = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._app = None

    @property
    def page_url(self) -> str | None:
        if self.url is None:
            return None
        return self.url + (f"?token={self.token}" if self.token else "")

    def start(self, timeout: float = 10.0) -> str | None:
        """Bind, serve on a daemon thread and return the URL; None when the config disables the console."""
        if not self.config.enabled:
            return None
        if self._thread is not None:
            return self.url
        import uvicorn

        ws = _ws_protocol()
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.config.host, self.config.port))
        except OSError as err:
            sock.close()
            raise OSError(f"console: cannot listen on {self.config.host}:{self.config.port} ({err}); "
                          "pick another port (0 = any free one)") from None
        self._sock = sock
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}/"
        self._app = create_app(self.hub, self.config, self.run_dir, self.token, self.runs_root)
        app = ConsoleAuthMiddleware(self._app, self.token)
        uv_config = uvicorn.Config(
            app, log_level="warning", lifespan="off", access_log=False, timeout_keep_alive=KEEP_ALIVE_S,
            http=functools.partial(_http_protocol(), timeout_request=REQUEST_TIMEOUT_S),
            ws=ws, ws_max_size=MAX_MESSAGE_BYTES, ws_per_message_deflate=False)
        self._server = uvicorn.Server(uv_config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"console-{port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"console on {self.url} did not start")
            time.sleep(0.005)
        return self.url

    def close(self) -> None:
        """Stop serving (open pages lose their socket); the hub keeps its state."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        if self._sock is not None:
            self._sock.close()
        if self._app is not None:
            for pool in self._app.state.executors:
                pool.shutdown(wait=False, cancel_futures=True)
        self._server = self._thread = self._sock = self._app = None

    def __enter__(self) -> "ConsoleServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _http_protocol():
    """The robot server's h11 protocol (deadlines on idle and trickling requests), whose request deadline
    stops where a WebSocket begins: the socket then lives as long as the page."""
    from robot_servers.serve import TimedH11Protocol

    class ConsoleH11Protocol(TimedH11Protocol):
        upgraded = False

        def handle_websocket_upgrade(self, event) -> None:
            self.upgraded = True
            self._stop_deadline()
            super().handle_websocket_upgrade(event)

        def _watch_request(self) -> None:
            if self.upgraded:
                self._stop_deadline()
            else:
                super()._watch_request()

    return ConsoleH11Protocol


def _ws_protocol() -> str:
    """uvicorn's WebSocket implementation: websockets (sans-I/O) or wsproto, whichever is installed."""
    try:
        import websockets  # noqa: F401

        return "websockets-sansio"
    except ImportError:
        pass
    try:
        import wsproto  # noqa: F401

        return "wsproto"
    except ImportError:
        raise RuntimeError("the console needs a WebSocket library: pip install websockets") from None
