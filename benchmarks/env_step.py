"""One env step through the robot server on loopback (real-time twin, two 128×128 cameras).

Measures, at a 10 Hz control rate on a drift-free clock:
- ours: one POST /step per tick: the target plus the time left to the tick; the server observes at the
  tick and answers with state + both frames (the env's ``FrankaEnv.step`` does the same);
- ours_target_then_observe: POST /target, wait for the tick on the client, GET /observe (two requests);
- serl_style: the same server driven as SERL drives its Flask server: POST /recover (SERL's
  /clearerr before every pose), POST /target, then GET /state and one GET /images per camera;
- frankaenv: ``FrankaEnv`` (pixel PandaPickCube) on ``HttpRobotClient`` — what a training loop sees.
"Overhead" is the wall time a step spends outside the wait for its tick: the robot I/O a policy
loop pays beyond the control period. Period error is the spacing of consecutive ticks minus the period.
Prints one JSON object. ``--quick``: ~50 steps, no peer environment needed (SERL-style is built in).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from robot_servers.clock import PeriodicClock  # noqa: E402
from robot_servers.processes import start_robot_server  # noqa: E402
from serl.envs.http_client import HttpRobotClient  # noqa: E402

SPIN_S = 0.001  # sleep until this close to the tick, then spin: time.sleep alone overshoots under load


def precise_sleep(seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    if seconds > SPIN_S:
        time.sleep(seconds - SPIN_S)
    while time.perf_counter() < deadline:
        pass


def percentiles_ms(values) -> dict[str, float]:
    arr = np.asarray(values) * 1e3
    return {"p50": round(float(np.percentile(arr, 50)), 3), "p99": round(float(np.percentile(arr, 99)), 3),
            "mean": round(float(arr.mean()), 3), "max": round(float(arr.max()), 3)}


def target_at(reset_pose: np.ndarray, i: int) -> np.ndarray:
    """A slow circle (2 cm radius) so the arm really moves while we measure."""
    pose = reset_pose.copy()
    pose[0] += 0.02 * np.cos(i * 0.05)
    pose[1] += 0.02 * np.sin(i * 0.05)
    return pose


def control_loop(steps: int, period: float, command, observe) -> dict:
    """Drift-free loop; the client's CPU per step depends less on machine load than wall-clock latency."""
    overheads, observes, period_errors = [], [], []
    clock = PeriodicClock(period, time.perf_counter)
    client_cpu = 0.0  # only around the robot I/O: the spin before each tick would count otherwise
    for i in range(steps):
        start, cpu = time.perf_counter(), time.process_time()
        command(i)
        commanded = time.perf_counter()
        client_cpu += time.process_time() - cpu
        clock.wait(precise_sleep)
        period_error = clock.tick()
        tick, cpu = clock.last_tick, time.process_time()
        observe()
        end = time.perf_counter()
        client_cpu += time.process_time() - cpu
        overheads.append((commanded - start) + (end - tick))
        observes.append(end - tick)
        if i:
            period_errors.append(period_error)
    return {"steps": steps, "overhead_ms": percentiles_ms(overheads), "observe_ms": percentiles_ms(observes),
            "period_error_abs_ms": percentiles_ms(np.abs(period_errors)), "overruns": clock.overruns,
            "client_cpu_ms_per_step": round(client_cpu / steps * 1e3, 3)}


def thread_cpu_s(pid: int, tid: int) -> float:
    """User + system CPU seconds of one thread (Linux /proc; 10 ms resolution)."""
    with open(f"/proc/{pid}/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_server_cpu(pid: int, run) -> dict:
    """Run the loop and add the server's request-handling CPU per step: its main thread runs the
    event loop, where a real-time server parses, validates, commands and encodes (physics and camera
    capture run on their own threads and are not counted)."""
    start = thread_cpu_s(pid, pid)
    result = run()
    result["server_request_cpu_ms_per_step"] = round((thread_cpu_s(pid, pid) - start) / result["steps"] * 1e3, 3)
    return result


def one_trip_loop(steps: int, period: float, step) -> dict:
    """Drift-free loop of single round trips: ``step(i, wait)`` sends the target with the time left to
    the tick and the server observes at the tick. Overhead: the step's wall time beyond that wait."""
    overheads, period_errors = [], []
    clock = PeriodicClock(period, time.perf_counter)
    client_cpu = 0.0
    for i in range(steps):
        start, cpu = time.perf_counter(), time.process_time()
        wait = clock.time_to_tick()
        step(i, wait)
        period_error = clock.tick()
        client_cpu += time.process_time() - cpu
        overheads.append(clock.last_tick - start - wait)
        if i:
            period_errors.append(period_error)
    return {"steps": steps, "overhead_ms": percentiles_ms(overheads),
            "period_error_abs_ms": percentiles_ms(np.abs(period_errors)), "overruns": clock.overruns,
            "client_cpu_ms_per_step": round(client_cpu / steps * 1e3, 3), "requests_per_step": 1}


def frankaenv_loop(url: str, steps: int) -> dict:
    from serl.envs.franka_env import FrankaEnv
    from serl.envs.rewards import make_reward
    from serl.envs.tasks import get_task, pixel_variant

    task = pixel_variant(get_task("PandaPickCube"))
    env = FrankaEnv(HttpRobotClient(url), task, reward_fn=make_reward(task))
    env.reset(seed=0)
    overheads, period_errors = [], []
    rng = np.random.default_rng(0)
    for _ in range(steps):
        action = rng.uniform(-0.3, 0.3, size=env.action_space.shape).astype(np.float32)
        start = time.perf_counter()
        _, _, terminated, truncated, info = env.step(action)
        overheads.append(time.perf_counter() - start - env.period)
        period_errors.append(info["control_period_error"])
        if terminated or truncated:
            env.reset()
    env.close()
    # env.step sleeps to its tick, so wall time minus the period approximates the robot I/O after the tick
    return {"steps": steps, "step_minus_period_ms": percentiles_ms(overheads),
            "period_error_abs_ms": percentiles_ms(np.abs(period_errors))}


def start_server_process():
    """The robot server as users run it: its own process, real-time twin, two 128×128 cameras."""
    from serl.cli.serve import SERVE_COMMAND

    return start_robot_server(["--backend", "twin", "--task", "PandaPickCube", "--option", 'cameras=["wrist","front"]',
                               "image_size=[128,128]"], SERVE_COMMAND)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: ~50 steps")
    parser.add_argument("--steps", type=int, default=None, help="steps for ours (default 1000, quick 50)")
    parser.add_argument("--hz", type=float, default=10.0)
    args = parser.parse_args()
    steps = args.steps or (50 if args.quick else 1000)
    serl_steps = max(20, steps // 3)
    env_steps = 20 if args.quick else 200
    period = 1.0 / args.hz

    from serl.envs.tasks import get_task

    task = get_task("PandaPickCube")
    server, url = start_server_process()
    client = HttpRobotClient(url)
    import httpx

    http = httpx.Client(base_url=url)  # SERL uses requests; one keep-alive httpx client is a lower bound
    cameras = client.health()["cameras"]
    reset_pose = np.asarray(task.reset_pose, dtype=np.float64)
    try:
        client.set_target(reset_pose, gripper=0.08)
        time.sleep(1.5)
        for _ in range(20):  # warm up connection, JSON and msgpack paths
            client.observe()

        ours = with_server_cpu(server.pid, lambda: one_trip_loop(
            steps, period, lambda i, wait: client.step(target_at(reset_pose, i), wait=wait)))
        two = None
        if not args.quick:  # the previous two-request step, for comparison
            two = with_server_cpu(server.pid, lambda: control_loop(
                steps // 2, period, lambda i: client.set_target(target_at(reset_pose, i)), client.observe))
            two["requests_per_step"] = 2

        def serl_command(i):
            http.post("/recover").raise_for_status()
            http.post("/target", json={"pose": target_at(reset_pose, i).tolist()}).raise_for_status()

        def serl_observe():
            http.get("/state").raise_for_status()
            for name in cameras:
                http.get("/images", params={"camera": name}).raise_for_status()

        serl = control_loop(serl_steps, period, serl_command, serl_observe)
        serl["requests_per_step"] = 3 + len(cameras)
        env = frankaenv_loop(url, env_steps)
    finally:
        client.close()
        http.close()
        server.terminate()
        server.wait(timeout=20)

    report = {
        "benchmark": "env_step",
        "mode": "quick" if args.quick else "full",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs: timings are noisy",
        "control_hz": args.hz,
        "cameras": cameras,
        "server": "serl serve (own process): real-time twin, PandaPickCube box, cameras on a capture thread",
        "ours": ours,
        "ours_target_then_observe": two,
        "serl_style": serl,
        "ratio_overhead_serl_over_ours": {
            "p50": round(serl["overhead_ms"]["p50"] / ours["overhead_ms"]["p50"], 2),
            "p99": round(serl["overhead_ms"]["p99"] / ours["overhead_ms"]["p99"], 2),
        },
        "ratio_client_cpu_per_step_serl_over_ours": round(
            serl["client_cpu_ms_per_step"] / max(ours["client_cpu_ms_per_step"], 1e-9), 2),
        "frankaenv_http": env,
        "targets": {"overhead_p50_ms": 3.0, "overhead_p99_ms": 10.0, "period_error_p99_ms": 2.0},
        "meets_targets": {
            "overhead_p50": ours["overhead_ms"]["p50"] <= 3.0,
            "overhead_p99": ours["overhead_ms"]["p99"] <= 10.0,
            "period_error_p99": ours["period_error_abs_ms"]["p99"] <= 2.0,
        },
        "notes": "SERL-style reuses one keep-alive httpx connection (SERL uses requests, a new connection "
                 "per call), so its figure is a lower bound. server_request_cpu: the server's event-loop thread.",
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
