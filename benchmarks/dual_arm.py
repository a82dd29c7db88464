"""Inter-arm command skew of ``DualFrankaEnv``: two real-time twin robot servers on loopback, one env stepping both
arms at the task's 10 Hz; the skew of a step is the time between the two arms' acknowledged targets.

Prints one JSON object: p50 / p99 / max skew in ms for the concurrent sends the env makes and, in the same run
against the same servers, for sending the two targets one after the other (the naive way), and their ratio.
Target: p99 <= 2 ms. ``--quick``: a few steps (CI smoke test).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time

import numpy as np


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def connect(url: str, server: subprocess.Popen, client_type, timeout: float = 120.0):
    """A client once the server at ``url`` answers (it builds and compiles its twin first)."""
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the robot server for {url} exited with {server.returncode}")
        try:
            return client_type(url)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=600, help="env steps per mode")
    args = parser.parse_args()
    from serl.envs.dual_franka_env import DualFrankaEnv
    from serl.envs.franka_env import FrankaEnv
    from serl.envs.http_client import HttpRobotClient
    from serl.envs.tasks import get_task, with_overrides

    steps = 10 if args.quick else args.steps
    ports = [free_port() for _ in range(2)]
    servers = [subprocess.Popen([sys.executable, "-m", "robot_servers", "--backend", "twin", "--port", str(port),
                                 "--option", "cameras=[]", f"seed={seed}", "--log-level", "warning"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for seed, port in enumerate(ports)]
    report = {"benchmark": "dual_arm", "quick": args.quick, "steps_per_mode": steps,
              "transport": "HTTP on loopback, two real-time twin robot servers in their own processes"}
    env = None
    try:
        clients = [connect(f"http://127.0.0.1:{port}", server, HttpRobotClient) for port, server in zip(ports, servers)]
        task = with_overrides(get_task("PandaPickCube"), scene_objects=(), reset_hooks=(), rotation_actions=False,
                              max_episode_steps=10 ** 6)
        report["control_hz"] = task.control_hz
        env = DualFrankaEnv(*(FrankaEnv(client, task, reward_fn=None) for client in clients))
        env.reset(seed=0)
        rng = np.random.default_rng(0)
        for mode in ("concurrent", "sequential"):
            env.command_skews.clear()
            started = time.monotonic()
            for _ in range(steps):
                action = rng.uniform(-0.2, 0.2, env.action_space.shape)
                if mode == "concurrent":
                    env.step(action)
                else:  # both targets from this thread, one after the other, then the same period and observation
                    commands = env.commands(action)
                    done = []
                    for arm, arm_env in env.arms.items():
                        arm_env.send(commands[arm])
                        done.append(time.monotonic())
                    env.command_skews.append(done[1] - done[0])
                    env._pacing.wait(time.sleep)
                    env._pacing.tick()
                    for arm, arm_env in env.arms.items():
                        arm_env.conclude(commands[arm], *arm_env.observe_after(), 0.0)
            skews = np.array(env.command_skews) * 1e3
            report[mode] = {"skew_ms_p50": round(float(np.percentile(skews, 50)), 3),
                            "skew_ms_p99": round(float(np.percentile(skews, 99)), 3),
                            "skew_ms_max": round(float(skews.max()), 3),
                            "steps_per_s": round(steps / (time.monotonic() - started), 2)}
        report["p99_ratio_sequential_over_concurrent"] = round(
            report["sequential"]["skew_ms_p99"] / max(report["concurrent"]["skew_ms_p99"], 1e-6), 2)
        report["meets_target_p99_2ms"] = report["concurrent"]["skew_ms_p99"] <= 2.0
    finally:
        if env is not None:
            env.close()
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
