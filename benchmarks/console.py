"""Training console: camera frame latency to a page, and what a page costs the actor's control period.

The twin env (PandaPickCube with pixels, built as the actor builds it) steps at its control rate on a
drift-free clock, publishing one ``StepView`` per step into a ``ConsoleHub`` served by a ``ConsoleServer``.
Blocks without a page alternate with blocks with one page: a real WebSocket client in its own process (as a
browser is) that decodes every JPEG.

- ``frame_latency_ms``: ``StepView.time`` (after the step returned its frames) → the page has the decoded
  frame; p50 and p99 over every frame received but those of the step already there when the page connected.
- ``period_ratio_p99``: p99 of the spacing of step starts divided by the nominal period, per condition.

- ``input_to_target_periods``: a key press on a page (a teleop message sent by a page process holding the
  teleop) → the step whose target carries it (the env reads the teleop when its step starts and sends the
  target at once), in control periods. Waiting for the next tick is part of it (uniform in one period).

Targets: p50 frame latency ≤ 150 ms; the period p99 with a page ≤ 1.1× the period; input to target within
one control period plus transport (p99 ≤ 1.1). Prints one JSON object. ``--quick``: two blocks of 1 s per condition.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from robot_servers.clock import PeriodicClock  # noqa: E402
from serl.console.hub import ONE_ARM, ArmView, ConsoleHub, StepView  # noqa: E402
from serl.console.server import ConsoleConfig, ConsoleServer, parse_frame_message  # noqa: E402
from serl.envs.franka_env import franka_env_under  # noqa: E402
from serl.runtime.env_config import EnvConfig  # noqa: E402
from serl.runtime.envs import build_env  # noqa: E402


def page_client(url: str) -> None:
    """``--page URL``: one page in its own process (as a browser is): receive everything, decode each JPEG,
    and on stdin's end print the capture → decoded latencies (s) as JSON."""
    from PIL import Image
    from websockets.sync.client import connect

    warm = io.BytesIO()  # load the JPEG codec now, not in the first measured period
    Image.new("RGB", (8, 8)).save(warm, format="JPEG")
    Image.open(warm).convert("RGB").load()
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    latencies, states, first_seq = [], 0, None  # the step already there on connect waited for the page
    with connect(url, open_timeout=10.0, max_size=2 ** 24) as ws:
        print("ready", flush=True)
        while not stop.is_set():
            try:
                message = ws.recv(timeout=0.1)
            except TimeoutError:
                continue
            if isinstance(message, str):
                states += 1
                continue
            header, jpeg = parse_frame_message(message)
            Image.open(io.BytesIO(jpeg)).convert("RGB").load()
            first_seq = header["seq"] if first_seq is None else first_seq
            if header["seq"] != first_seq:
                latencies.append(time.time() - header["time"])
    print(json.dumps({"latencies": latencies, "states": states}), flush=True)


def teleop_client(url: str, events: int, period: float) -> None:
    """``--teleop-page URL``: a page holding the teleop; presses +x or -x at random times (for two periods each),
    idle heartbeats in between; prints each press's send time (wall clock) and sign as JSON."""
    from websockets.sync.client import connect

    rng = np.random.default_rng(0)
    presses = []
    with connect(url, open_timeout=10.0, max_size=2 ** 24) as ws:
        ws.send(json.dumps({"type": "claim_teleop"}))
        while True:
            message = ws.recv(timeout=10.0)
            if isinstance(message, str) and json.loads(message).get("type") == "teleop" and json.loads(message)["granted"]:
                break
        idle = json.dumps({"type": "teleop", "twist": [0.0] * 6, "gripper": None, "active": False})
        print("ready", flush=True)
        for k in range(events):
            until = time.monotonic() + rng.uniform(2.0, 3.0) * period  # a random phase against the ticks
            while time.monotonic() < until:
                ws.send(idle)
                time.sleep(min(0.03, max(0.0, until - time.monotonic())))
            sign = 1.0 if k % 2 == 0 else -1.0
            press = json.dumps({"type": "teleop", "twist": [sign, 0, 0, 0, 0, 0], "gripper": None, "active": True})
            presses.append((time.time(), sign))
            until = time.monotonic() + 2 * period
            while time.monotonic() < until:
                ws.send(press)
                time.sleep(0.03)
        ws.send(idle)
    print(json.dumps({"presses": presses}), flush=True)


def input_to_target(env, hub: ConsoleHub, events: int, url: str, state: dict) -> list[float]:
    """Step with a teleop page pressing keys; per press, periods until the step that sent its target."""
    period = franka_env_under(env).period
    process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--teleop-page", url, str(events),
                                str(period)], stdout=subprocess.PIPE, text=True)
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError("the teleop page did not connect")
    steps: list[tuple[float, bool, float]] = []  # (step start, intervened, x of the executed action)

    def record(started: float, info: dict) -> None:
        executed = info.get("executed_action")
        steps.append((started, bool(info.get("intervened")), 0.0 if executed is None else float(executed[0])))

    while process.poll() is None:
        run_phase(env, hub, 1.0, state, on_step=record)
    presses = json.loads(process.stdout.read().strip().splitlines()[-1])["presses"]
    periods = []
    for sent, sign in presses:
        carried = [start for start, intervened, x in steps if start >= sent and intervened and np.sign(x) == sign]
        if carried:
            periods.append((carried[0] - sent) / period)
    return periods


class Page:
    """A ``page_client`` process, connected on entry, done on exit."""

    def __init__(self, url: str):
        self.url = url
        self.result: dict = {}

    def __enter__(self) -> "Page":
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--page", self.url],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the page client did not connect")
        time.sleep(0.5)  # the page's start (the step already there, its first decode) is not a control period
        return self

    def __exit__(self, *exc) -> None:
        out, _ = self.process.communicate("", timeout=30)
        self.result = json.loads(out.strip().splitlines()[-1])


def run_phase(env, hub: ConsoleHub, seconds: float, state: dict, on_step=None) -> list[float]:
    """Step the env at its control rate for ``seconds``, publishing each step; the start-to-start spacings."""
    base = franka_env_under(env)
    clock = PeriodicClock(base.period)
    spacings, last = [], None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        clock.wait()
        now = time.perf_counter()
        if last is not None:
            spacings.append(now - last)
        last = now
        started = time.time()
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        if on_step is not None:
            on_step(started, info)
        state["step"] += 1
        state["episode_step"] += 1
        state["return"] += float(reward)
        robot = base.state
        hub.publish(StepView(
            step=state["step"], episode=state["episode"], episode_step=state["episode_step"], reward=float(reward),
            episode_return=state["return"], success=bool(info.get("succeed", False)), acting="policy",
            frames={name: obs[name] for name in ("wrist", "front") if name in obs},
            arms={ONE_ARM: ArmView(tcp_pose=[float(v) for v in robot.tcp_pose],
                                   target_pose=[float(v) for v in robot.target_pose])},
        ))
        if terminated or truncated:
            env.reset()
            clock.restart()  # a reset is not a control period
            last = None
            state.update(episode=state["episode"] + 1, episode_step=0, **{"return": 0.0})
    return spacings


def percentile(values, q) -> float | None:
    return None if not values else float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 blocks of 1 s per condition")
    parser.add_argument("--blocks", type=int, default=6, help="blocks per condition (no page, one page), alternating")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per block")
    parser.add_argument("--presses", type=int, default=40, help="teleop key presses from a page")
    parser.add_argument("--page", help=argparse.SUPPRESS)  # internal: run as the page client
    parser.add_argument("--teleop-page", nargs=3, help=argparse.SUPPRESS)  # internal: URL, presses, period
    args = parser.parse_args()
    if args.page:
        return page_client(args.page)
    if args.teleop_page:
        url, events, period = args.teleop_page
        return teleop_client(url, int(events), float(period))
    blocks, seconds = (2, 1.0) if args.quick else (args.blocks, args.seconds)

    config = ConsoleConfig(port=0)
    hub = config.hub()
    env = build_env(EnvConfig(task="PandaPickCube", pixels=True), seed=0, teleop="browser", console=hub)
    env.reset(seed=0)
    period = franka_env_under(env).period
    server = ConsoleServer(hub, config)
    url = server.start().replace("http://", "ws://") + "ws"
    state = {"step": 0, "episode": 0, "episode_step": 0, "return": 0.0}
    alone, watched, latencies, states = [], [], [], 0
    try:
        run_phase(env, hub, 1.0, state)  # warm-up: the first renders
        # alternating blocks, so that load from elsewhere on the machine falls on both conditions alike
        for _ in range(blocks):
            alone += run_phase(env, hub, seconds, state)
            with Page(url) as page:
                watched += run_phase(env, hub, seconds, state)
                time.sleep(0.3)  # the last frames in flight
            latencies += page.result["latencies"]
            states += page.result["states"]
        press_periods = input_to_target(env, hub, 6 if args.quick else args.presses, url, state)
    finally:
        server.close()
        env.close()

    latency_ms = [1e3 * v for v in latencies]
    ratio = {"no_page": percentile([s / period for s in alone], 99),
             "one_page": percentile([s / period for s in watched], 99)}
    report = {
        "env": "PandaPickCube, pixels (wrist, front 128x128), twin paced at its control rate",
        "control_period_ms": 1e3 * period,
        "blocks_per_condition": blocks,
        "seconds_per_block": seconds,
        "periods": {"no_page": len(alone), "one_page": len(watched)},
        "jpeg_encoder": "opencv" if _has_cv2() else "pillow",
        "max_fps": config.max_fps,
        "frames_received": len(latency_ms),
        "states_received": states,
        "frame_latency_ms": {"p50": percentile(latency_ms, 50), "p99": percentile(latency_ms, 99)},
        "period_ratio_p99": ratio,
        "period_ratio_max": {"no_page": max(alone, default=0) / period, "one_page": max(watched, default=0) / period},
        "presses": len(press_periods),
        "input_to_target_periods": {"p50": percentile(press_periods, 50), "p99": percentile(press_periods, 99)},
        "targets": {"frame_latency_p50_ms": 150.0, "period_ratio_p99": 1.1, "input_to_target_periods_p99": 1.1},
    }
    report["meets_targets"] = bool(
        latency_ms and report["frame_latency_ms"]["p50"] <= 150.0 and ratio["one_page"] is not None
        and ratio["one_page"] <= 1.1 and press_periods and report["input_to_target_periods"]["p99"] <= 1.1)
    print(json.dumps(report))


def _has_cv2() -> bool:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
