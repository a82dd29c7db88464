"""The training console against a real server on loopback: HTTP routes, the token, the WebSocket protocol
(real sockets), the teleop between pages, and the page itself in headless Chromium."""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from serl.console.hub import COMMANDS, ONE_ARM, ArmView, ConsoleHub, StepView
from serl.console.server import ConsoleConfig, ConsoleServer, parse_frame_message
from serl.devices.two_arms import drive_button

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
TIMEOUT = 10.0  # generous: a loaded 2-core machine


def arm_view(x: float = 0.5, **fields) -> ArmView:
    defaults = dict(tcp_pose=[x, 0.0, 0.2, 0.0, 1.0, 0.0, 0.0], target_pose=[x + 0.01, 0.0, 0.19, 0.0, 1.0, 0.0, 0.0],
                    gripper=0.04, guard={"watchdog": "ok", "safety_stop": False, "nan": float("nan")},
                    safety_box={"low": [0.3, -0.2, 0.0], "high": [0.7, 0.2, 0.4]})
    defaults.update(fields)
    return ArmView(**defaults)


def view(step: int, color=(200, 30, 30), **fields) -> StepView:
    image = np.empty((48, 64, 3), np.uint8)
    image[...] = color
    full = np.zeros((120, 160, 3), np.uint8)
    full[..., 0] = np.linspace(0, 255, 160, dtype=np.uint8)[None, :]
    full[..., 1] = np.linspace(0, 255, 120, dtype=np.uint8)[:, None]
    full[..., 2] = step % 256
    defaults = dict(step=step, episode=step // 50, episode_step=step % 50, reward=0.0, episode_return=0.5,
                    success=False, acting="policy", frames={"wrist": image}, full_frames={"front": full},
                    arms={ONE_ARM: arm_view()}, weights_version=3, weights_age_s=1.5)
    defaults.update(fields)
    return StepView(**defaults)


def write_run(run_dir: Path, episodes: int = 30) -> Path:
    run_dir.mkdir(parents=True)
    with open(run_dir / "episodes.jsonl", "w") as handle:
        for i in range(episodes):
            handle.write(json.dumps({
                "env_steps": 100 * (i + 1), "episode": i + 1, "episode/return": 0.1 * i, "episode/length": 100 - i,
                "episode/success": float(i % 3 == 0), "episode/intervention_rate": 1.0 / (i + 1),
                "time": 1.7e9 + 30 * i}) + "\n")
    return run_dir


@pytest.fixture
def hub():
    return ConsoleHub(teleop_timeout_s=0.5)


@pytest.fixture
def console(hub, tmp_path):
    run_dir = write_run(tmp_path / "runs" / "PandaPickCube" / "now")
    write_run(tmp_path / "runs" / "PandaPickCube" / "before", episodes=10)
    server = ConsoleServer(hub, ConsoleConfig(port=0, max_fps=30.0), run_dir=run_dir)
    server.start()
    yield server
    server.close()


def ws_url(server: ConsoleServer, query: str = "") -> str:
    return server.url.replace("http://", "ws://") + "ws" + query


class Page:
    """A WebSocket client as a page is: reads what the server pushes, sends JSON."""

    def __init__(self, url: str):
        self.ws = connect(url, open_timeout=TIMEOUT, max_size=2 ** 24)
        self.hello = self.expect(lambda m: m.get("type") == "hello")
        self.client = self.hello["client"]

    def send(self, **message) -> None:
        self.ws.send(json.dumps(message))

    def expect(self, predicate, timeout: float = TIMEOUT, binary: bool = False):
        """The first message (JSON, or (header, jpeg) with ``binary``) that ``predicate`` accepts."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no matching message from the console in time")
            try:
                raw = self.ws.recv(timeout=left)
            except TimeoutError:
                continue
            if isinstance(raw, bytes) != binary:
                continue
            message = parse_frame_message(raw) if binary else json.loads(raw)
            if predicate(message):
                return message

    def close(self) -> None:
        self.ws.close()


def wait_for(condition, timeout: float = TIMEOUT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# ---- configuration and HTTP ----------------------------------------------------------------------------

def test_refuses_to_bind_beyond_loopback_without_a_token(hub, monkeypatch):
    monkeypatch.delenv("SERL_CONSOLE_TOKEN", raising=False)
    with pytest.raises(ValueError, match="beyond loopback"):
        ConsoleServer(hub, ConsoleConfig(host="0.0.0.0"))
    ConsoleServer(hub, ConsoleConfig(host="0.0.0.0", token="s3cret"))  # allowed with a token (not started)
    monkeypatch.setenv("SERL_CONSOLE_TOKEN", "from-env")
    assert ConsoleServer(hub, ConsoleConfig(host="0.0.0.0")).token == "from-env"


def test_disabled_console_does_not_start(hub):
    server = ConsoleServer(hub, ConsoleConfig(port=0, enabled=False))
    assert server.start() is None and server.url is None
    server.close()


def test_http_routes_serve_page_static_files_curves_runs_and_summary(console):
    with httpx.Client(base_url=console.url, timeout=TIMEOUT) as http:
        page = http.get("/")
        assert page.status_code == 200 and "serl console" in page.text
        for name in ("console.js", "console.css", "index.html"):
            assert http.get(f"/static/{name}").status_code == 200
        curves = http.get("/api/curves").json()
        assert curves["episodes"] == 30 and len(curves["by_steps"]["env_steps"]) == 30
        runs = http.get("/api/runs").json()
        assert runs["current"] == "now" and [run["id"] for run in runs["runs"]] == ["PandaPickCube/before"]
        assert "dir" not in runs["runs"][0]
        assert http.get("/api/curves", params={"run": "PandaPickCube/before"}).json()["episodes"] == 10
        assert http.get("/api/curves", params={"run": "../../etc"}).status_code == 404
        assert http.get("/summary.png").status_code == 404
        (console.run_dir / "summary.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        assert http.get("/summary.png").headers["content-type"] == "image/png"
        assert http.get("/api/state").json()["view"] is None


def test_without_a_token_only_loopback_host_names_are_served(console):
    # a page on another site whose name resolves to 127.0.0.1 (DNS rebinding) sends its own Host
    assert httpx.get(console.url, headers={"host": "evil.example:80"}, timeout=TIMEOUT).status_code == 403
    with pytest.raises(InvalidStatus):
        connect(ws_url(console), additional_headers={"Origin": "http://evil.example"}, open_timeout=TIMEOUT)


def test_token_is_required_on_every_route_and_the_websocket(hub, tmp_path):
    server = ConsoleServer(hub, ConsoleConfig(port=0, token="s3cret"), run_dir=tmp_path)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
            for path in ("/", "/static/console.js", "/api/curves", "/api/runs", "/summary.png", "/api/state"):
                assert http.get(path).status_code == 401, path
                assert http.get(path, params={"token": "wrong"}).status_code == 403, path
            assert http.get("/api/state", headers={"authorization": "Bearer s3cret"}).status_code == 200
            assert http.get("/static/console.js", params={"token": "s3cret"}).status_code == 200
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as browser:  # the page's cookie covers the rest
            assert browser.get("/", params={"token": "s3cret"}).status_code == 200
            assert browser.get("/static/console.js").status_code == 200
        assert server.page_url.endswith("/?token=s3cret")
        for query in ("", "?token=wrong"):
            with pytest.raises(InvalidStatus):
                connect(ws_url(server, query), open_timeout=TIMEOUT)
        page = Page(ws_url(server, "?token=s3cret"))
        page.send(type="command", name="mark_success")
        page.expect(lambda m: m.get("type") == "ok")
        assert hub.commands() == ["mark_success"]
        page.close()
    finally:
        server.close()


# ---- the WebSocket -------------------------------------------------------------------------------------

def test_state_and_jpeg_frames_for_each_newer_step(console, hub):
    from PIL import Image

    page = Page(ws_url(console))
    assert page.hello["commands"] == list(COMMANDS) and page.hello["teleop_timeout_s"] == 0.5
    hub.publish_learner({"updates": 120, "critic_loss": np.float32(0.25)})
    hub.publish(view(1, color=(220, 20, 20)))
    state = page.expect(lambda m: m["type"] == "state" and m["seq"] == 1)
    assert state["view"]["step"] == 1 and state["view"]["cameras"] == ["wrist"]
    assert "frames" not in state["view"] and state["view"]["arms"][ONE_ARM]["guard"]["nan"] is None  # strict JSON
    assert state["learner"] == {"updates": 120, "critic_loss": 0.25}
    assert state["teleop"] == {"holder": None, "live": False, "you_hold": False} and state["paused"] is False
    header, jpeg = page.expect(lambda m: m[0]["kind"] == "policy", binary=True)
    image = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    assert header["camera"] == "wrist" and image.shape == (48, 64, 3) and header["seq"] == 1
    assert np.abs(image.astype(int) - (220, 20, 20)).max() < 30
    header, jpeg = page.expect(lambda m: m[0]["kind"] == "full", binary=True)
    assert (header["camera"], header["width"], header["height"]) == ("front", 160, 120)
    hub.publish(view(2, color=(20, 20, 220)))
    header, jpeg = page.expect(lambda m: m[0]["kind"] == "policy" and m[0]["seq"] == 2, binary=True)
    assert np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))[..., 2].mean() > 180
    page.close()


def test_learner_status_reaches_pages_between_steps(console, hub):
    page = Page(ws_url(console))
    hub.publish(view(1))
    page.expect(lambda m: m["type"] == "state" and m["seq"] == 1)
    hub.publish_learner({"updates": 7})  # no step follows: the robot is held
    state = page.expect(lambda m: m["type"] == "state" and m["learner"].get("updates") == 7)
    assert state["seq"] == 1
    page.close()


def test_pages_get_at_most_max_fps_steps_and_always_the_newest(console, hub):
    page = Page(ws_url(console))
    stop = threading.Event()

    def publish_fast():
        step = 0
        while not stop.is_set():
            step += 1
            hub.publish(view(step))
            time.sleep(0.002)

    feeder = threading.Thread(target=publish_fast, daemon=True)
    feeder.start()
    try:
        first = page.expect(lambda m: m["type"] == "state" and m["view"] is not None)
        started, seqs = time.monotonic(), [first["seq"]]
        while time.monotonic() - started < 1.0:
            seqs.append(page.expect(lambda m: m["type"] == "state")["seq"])
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        feeder.join()
    assert len(seqs) <= 30 * elapsed + 3  # max_fps=30
    assert seqs == sorted(seqs) and seqs[-1] - seqs[0] > len(seqs)  # steps in between were skipped, not queued
    page.close()


BAD_MESSAGES = [
    "not json",
    "[1, 2]",
    json.dumps({"type": "dance"}),
    json.dumps({"name": "pause"}),
    json.dumps({"type": "command", "name": "self_destruct"}),
    json.dumps({"type": "command"}),
    json.dumps({"type": "command", "name": "pause", "extra": 1}),
    json.dumps({"type": "teleop", "twist": [0.1] * 5, "gripper": None, "active": True}),
    json.dumps({"type": "teleop", "twist": [0.1] * 7, "gripper": None, "active": True}),
    '{"type": "teleop", "twist": [NaN, 0, 0, 0, 0, 0], "gripper": null, "active": true}',
    '{"type": "teleop", "twist": [Infinity, 0, 0, 0, 0, 0], "gripper": null, "active": true}',
    json.dumps({"type": "teleop", "twist": [1.5, 0, 0, 0, 0, 0], "gripper": None, "active": True}),
    json.dumps({"type": "teleop", "twist": ["1", 0, 0, 0, 0, 0], "gripper": None, "active": True}),
    json.dumps({"type": "teleop", "twist": [True, 0, 0, 0, 0, 0], "gripper": None, "active": True}),
    json.dumps({"type": "teleop", "twist": [0] * 6, "gripper": "squeeze", "active": True}),
    json.dumps({"type": "teleop", "twist": [0] * 6, "gripper": None, "active": "yes"}),
    json.dumps({"type": "teleop", "twist": [0] * 6, "gripper": None}),
    json.dumps({"type": "teleop", "twist": [0] * 6, "gripper": None, "active": True, "arm": "middle"}),
]


def test_malformed_messages_get_an_error_and_change_nothing(console, hub):
    page = Page(ws_url(console))
    page.send(type="claim_teleop")
    assert page.expect(lambda m: m["type"] == "teleop")["granted"]
    for raw in BAD_MESSAGES:
        page.ws.send(raw)
        error = page.expect(lambda m: m["type"] in ("error", "ok"))
        assert error["type"] == "error" and error["error"], raw
    page.ws.send(b"\x00binary")
    assert page.expect(lambda m: m["type"] in ("error", "ok"))["type"] == "error"
    assert hub.commands() == [] and not hub.paused
    command = hub.teleop_command()
    assert command is not None and not command.active and not command.twist.any()  # the claim's idle input only
    page.send(type="command", name="pause")  # the connection is still open and works
    assert page.expect(lambda m: m["type"] in ("error", "ok")) == {"type": "ok", "name": "pause"}
    assert hub.paused and hub.commands() == ["pause"]
    page.close()


def test_two_pages_one_teleop_holder(console, hub):
    a, b = Page(ws_url(console)), Page(ws_url(console))
    assert a.client != b.client
    a.send(type="claim_teleop")
    assert a.expect(lambda m: m["type"] == "teleop")["granted"] is True
    for page in (a, b):  # both see the holder
        state = page.expect(lambda m: m["type"] == "state" and m["teleop"]["holder"] == a.client)
        assert state["teleop"]["you_hold"] == (page is a)
    b.send(type="claim_teleop")
    refused = b.expect(lambda m: m["type"] == "teleop")
    assert (refused["holder"], refused["granted"]) == (a.client, False)
    stop = threading.Event()

    def a_drives():  # the holder's page keeps sending, as a page does at 25 Hz
        while not stop.is_set():
            a.send(type="teleop", twist=[0, 0.5, 0, 0, 0, 0], gripper="close", active=True)
            time.sleep(0.04)

    driver = threading.Thread(target=a_drives, daemon=True)
    driver.start()
    try:
        command = wait_for(lambda: (c := hub.teleop_command()) is not None and c.active and c, what="a's input")
        assert command.twist.tolist() == [0, 0.5, 0, 0, 0, 0] and command.gripper == "close"
        b.send(type="teleop", twist=[-1, 0, 0, 0, 0, 0], gripper="open", active=True)
        assert "held by " + a.client in b.expect(lambda m: m["type"] == "error")["error"]
        b.send(type="claim_teleop")  # a's input is fresh: still refused
        assert b.expect(lambda m: m["type"] == "teleop")["granted"] is False
        for _ in range(5):
            assert hub.teleop_command().twist[0] == 0  # b's input never reached the hub
            time.sleep(0.02)
    finally:
        stop.set()
        driver.join()
    a.send(type="release_teleop")
    b.expect(lambda m: m["type"] == "state" and m["teleop"]["holder"] is None)
    b.send(type="claim_teleop")
    assert b.expect(lambda m: m["type"] == "teleop")["granted"]
    a.close()
    b.close()


def test_a_page_that_disconnects_releases_the_teleop(console, hub):
    a, b = Page(ws_url(console)), Page(ws_url(console))
    a.send(type="claim_teleop")
    a.expect(lambda m: m["type"] == "teleop")
    a.send(type="teleop", twist=[1, 0, 0, 0, 0, 0], gripper=None, active=True)
    wait_for(lambda: (c := hub.teleop_command()) is not None and c.active, what="a's input")
    a.ws.close()
    wait_for(lambda: hub.teleop_holder is None and hub.teleop_command() is None, what="the release")
    b.expect(lambda m: m["type"] == "state" and m["teleop"]["holder"] is None)
    b.send(type="claim_teleop")
    assert b.expect(lambda m: m["type"] == "teleop")["granted"]
    b.close()


def test_silent_holder_hands_back_control_after_the_timeout(console, hub):
    page = Page(ws_url(console))
    page.send(type="claim_teleop")
    page.expect(lambda m: m["type"] == "teleop")
    page.send(type="teleop", twist=[0, 0, 1, 0, 0, 0], gripper=None, active=True)
    wait_for(lambda: (c := hub.teleop_command()) is not None and c.active, what="the input")
    wait_for(lambda: hub.teleop_command() is None, timeout=hub.teleop_timeout_s + TIMEOUT, what="the timeout")
    page.close()


def test_a_page_outlives_the_request_deadline_and_keep_alive(hub, monkeypatch):
    import serl.console.server as server_module

    monkeypatch.setattr(server_module, "REQUEST_TIMEOUT_S", 0.5)
    monkeypatch.setattr(server_module, "KEEP_ALIVE_S", 0.5)
    server = ConsoleServer(hub, ConsoleConfig(port=0))
    server.start()
    try:
        page = Page(ws_url(server))
        started = time.monotonic()
        step = 0
        while time.monotonic() - started < 2.0:  # four times the deadlines
            step += 1
            hub.publish(view(step))
            page.expect(lambda m, step=step: m["type"] == "state" and m["seq"] == step)
        page.close()
    finally:
        server.close()


def test_static_files_are_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["serl"]
    static = ROOT / "serl" / "console" / "static"
    packaged = {path for pattern in patterns for path in (ROOT / "serl").glob(pattern)}
    for name in ("index.html", "console.js", "console.css"):
        assert static / name in packaged, name


# ---- the page in a real browser ------------------------------------------------------------------------

PIXEL_IS = """([r, g, b]) => {
        const img = document.querySelector('img[data-camera="wrist"][data-kind="policy"]');
        if (!img || !img.complete || !img.naturalWidth) return false;
        const canvas = document.createElement("canvas");
        canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
        const ctx = canvas.getContext("2d");
        ctx.drawImage(img, 0, 0);
        const [pr, pg, pb] = ctx.getImageData(canvas.width >> 1, canvas.height >> 1, 1, 1).data;
        return Math.abs(pr - r) < 40 && Math.abs(pg - g) < 40 && Math.abs(pb - b) < 40;
    }"""  # the centre pixel of the wrist camera's image, as the page shows it


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"needs Debian's chromium at {CHROMIUM}")
def test_page_in_headless_chromium(hub, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    run_dir = write_run(tmp_path / "runs" / "PandaPickCube" / "now", episodes=60)
    write_run(tmp_path / "runs" / "PandaPickCube" / "before", episodes=20)
    hub.publish_learner({"updates": 4200, "updates_per_s": 18.5, "online_buffer": 6000, "demo_buffer": 2000,
                         "critic_loss": 0.31, "temperature": 0.012})
    server = ConsoleServer(hub, ConsoleConfig(port=0, token="s3cret"), run_dir=run_dir)
    server.start()
    color = [(220, 30, 30)]
    stop = threading.Event()

    def act():  # the actor's side: one StepView per 50 ms control period
        step = 0
        while not stop.is_set():
            step += 1
            acting = "human" if (c := hub.teleop_command()) is not None and c.active else "policy"
            guard = {"watchdog": "ok", "safety_stop": False}
            hub.publish(view(step, color=color[0], acting="paused" if hub.paused else acting,
                             episode_return=0.02 * (step % 50),
                             arms={arm: arm_view(0.5 + sign * 0.1 * np.sin(step / 20), guard=guard)
                                   for arm, sign in (("left", 1.0), ("right", -1.0))}))
            time.sleep(0.05)

    actor = threading.Thread(target=act, daemon=True)
    actor.start()
    commands: list[str] = []
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(server.page_url)
            page.wait_for_function(PIXEL_IS, arg=list(color[0]), timeout=TIMEOUT * 1000)
            color[0] = (30, 30, 220)  # the next frames are blue: the page shows them
            page.wait_for_function(PIXEL_IS, arg=list(color[0]), timeout=TIMEOUT * 1000)

            # two arms: the robot panel has a block per arm
            page.wait_for_function("['left', 'right'].every((arm) => [...document.querySelectorAll('#robot dt')]"
                                   ".some((dt) => dt.textContent === arm))", timeout=TIMEOUT * 1000)
            assert page.locator("#robot dt", has_text="position").count() == 2

            page.click("#btn-teleop")
            page.wait_for_selector("#btn-teleop.holding", timeout=TIMEOUT * 1000)
            page.keyboard.down("KeyW")
            command = wait_for(lambda: (c := hub.teleop_command()) is not None and c.active and c, what="W")
            assert command.twist.tolist() == [1, 0, 0, 0, 0, 0] and command.gripper is None
            assert command.buttons == {drive_button("left"): True}  # two arms: the page names the arm it drives
            page.keyboard.press("Tab")
            wait_for(lambda: (c := hub.teleop_command()) is not None and c.buttons == {drive_button("right"): True},
                     what="Tab: the right arm")
            assert page.is_checked("#arm-right")
            page.keyboard.down("Space")
            wait_for(lambda: (c := hub.teleop_command()) is not None and c.gripper == "close", what="space")
            page.wait_for_function("document.querySelector('#acting').textContent.startsWith('human')",
                                   timeout=TIMEOUT * 1000)
            page.wait_for_function("document.querySelector('#curves-note').textContent.includes('60 episodes')",
                                   timeout=TIMEOUT * 1000)
            page.check("#runs input[type=checkbox]")  # compare with the earlier run
            page.evaluate("window.scrollTo(0, 0)")  # the sticky header at the top of the full-page picture
            page.wait_for_timeout(300)  # let the plot redraw before the picture (what it shows is not asserted)
            page.screenshot(path=str(tmp_path / "console.png"), full_page=True)
            if os.environ.get("SERL_SAVE_SCREENSHOT") == "1":
                shutil.copy(tmp_path / "console.png", ROOT / "docs" / "figures" / "console.png")
            page.keyboard.up("Space")
            page.keyboard.up("KeyW")
            wait_for(lambda: (c := hub.teleop_command()) is not None and not c.active, what="idle heartbeat")

            page.click("#btn-mark_success")
            wait_for(lambda: commands.extend(hub.commands()) or "mark_success" in commands, what="mark success")
            page.click("#btn-pause")
            wait_for(lambda: hub.paused, what="pause")
            page.wait_for_selector("#btn-pause:text('Resume')", timeout=TIMEOUT * 1000)
            page.click("#btn-pause")
            wait_for(lambda: not hub.paused, what="resume")
            assert hub.teleop_command() is not None
            page.close()
            wait_for(lambda: hub.teleop_command() is None, timeout=hub.teleop_timeout_s + TIMEOUT, what="release")
            browser.close()
            assert not errors, errors
    finally:
        stop.set()
        actor.join()
        server.close()
