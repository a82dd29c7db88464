"""Inter-arm command skew of ``DualFrankaEnv`` over HTTP on loopback, one env stepping both arms at 10 Hz: two
real-time twin robot servers in two processes, and the bimanual twin (both arms in one world) served by one process.
The skew of a step is the time between the two arms' acknowledged targets; one process serving both takes them in
one request (``/pair/target``) and measures the time between the two targets it set.

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


def measure(clients, task, steps: int) -> dict:
    """Skews of ``steps`` env steps sending both targets concurrently, then as many sending them one after the other."""
    from serl.envs.dual_franka_env import DualFrankaEnv
    from serl.envs.franka_env import FrankaEnv

    report = {}
    env = DualFrankaEnv(*(FrankaEnv(client, arm_task, reward_fn=None) for client, arm_task in zip(clients, task)))
    try:
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
    finally:
        env.close()
    report["p99_ratio_sequential_over_concurrent"] = round(
        report["sequential"]["skew_ms_p99"] / max(report["concurrent"]["skew_ms_p99"], 1e-6), 2)
    report["meets_target_p99_2ms"] = report["concurrent"]["skew_ms_p99"] <= 2.0
    return report


def servers_for(world: str) -> tuple[list[subprocess.Popen], list[int], tuple]:
    """The robot server processes of ``world``, the arms' ports and each arm's task."""
    from serl.envs.bimanual import PANDA_HANDOVER
    from serl.envs.tasks import get_task, with_overrides

    bare = dict(scene_objects=(), reset_hooks=(), rotation_actions=False, max_episode_steps=10 ** 6)
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if world == "two":
        ports = [free_port() for _ in range(2)]
        servers = [subprocess.Popen([sys.executable, "-m", "robot_servers", "--backend", "twin", "--port", str(port),
                                     "--option", "cameras=[]", f"seed={seed}", "--log-level", "warning"], **quiet)
                   for seed, port in enumerate(ports)]
        task = with_overrides(get_task("PandaPickCube"), **bare)
        return servers, ports, (task, task)
    port = free_port()
    while True:  # the right arm takes the next port
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port + 1))
            break
        except OSError:
            port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "serl.cli.main", "serve", "--task", "PandaHandover", "--port",
                               str(port), "--log-level", "warning"], **quiet)
    tasks = tuple(with_overrides(arm, **bare) for arm in (PANDA_HANDOVER.left, PANDA_HANDOVER.right))
    return [server, server], [port, port + 1], tasks


WORLDS = {"two": "two real-time twin robot servers in their own processes",
          "one": "the bimanual twin: both arms in one world, served by one process (serl serve --task PandaHandover)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=600, help="env steps per mode")
    parser.add_argument("--worlds", nargs="+", default=list(WORLDS), choices=list(WORLDS))
    args = parser.parse_args()
    from serl.envs.http_client import HttpRobotClient

    steps = 10 if args.quick else args.steps
    report = {"benchmark": "dual_arm", "quick": args.quick, "steps_per_mode": steps, "transport": "HTTP on loopback",
              "control_hz": 10.0}
    for world in args.worlds:
        servers, ports, tasks = servers_for(world)
        try:
            clients = [connect(f"http://127.0.0.1:{port}", server, HttpRobotClient)
                       for port, server in zip(ports, servers)]
            report[world] = {"servers": WORLDS[world], **measure(clients, tasks, steps)}
        finally:
            for server in set(servers):
                server.terminate()
                server.wait(timeout=30)
    report["meets_target_p99_2ms"] = all(report[world]["meets_target_p99_2ms"] for world in args.worlds)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
