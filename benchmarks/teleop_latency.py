"""Teleop device-to-target latency: synthetic SpaceMouse input → robot target through the robot server.

A device thread feeds raw HID reports (the real ``SpaceMouseParser``) at random times; the control
loop is ``FrankaEnv`` (PandaPickCube, real-time twin in the robot server's own process, 10 Hz) under
``InterventionWrapper``. For each input event we time when the server has accepted the target that
carries it is sent to the server (FrankaEnv sends it at the start of its one ``/step`` request). Figures, in control periods:

- ``input_to_target``: event → target at the server. It includes waiting for the next control tick
  (uniform in one period), so about 0.5 at p50 and just under 1 plus the request at p99;
- ``read_to_target``: the device read in the step → target at the server (our processing + HTTP).

If the robot server cannot start (or with ``--local``) it uses ``LocalRobot`` and says so in ``path``.
Prints one JSON object. ``--quick``: 10 events, no peer needed (there is no peer for this figure).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from robot_servers.processes import start_robot_server  # noqa: E402
from serl.devices.base import Teleop, TeleopCommand, TeleopConfig  # noqa: E402
from serl.devices.spacemouse import FACING_ROBOT, SpaceMouseParser, command_from_parser, find_model  # noqa: E402


class SyntheticSpaceMouse(Teleop):
    """A SpaceMouse whose HID reports come from a thread: push along ±x for ``hold_s``, release, repeat."""

    def __init__(self, events: int, period: float, seed: int = 0, hold_periods: float = 2.0):
        self.hold_periods = hold_periods
        self.config = TeleopConfig(axis_map=FACING_ROBOT.axis_map, axis_signs=FACING_ROBOT.axis_signs)
        self.parser = SpaceMouseParser(find_model(0x256F, 0xC62E))
        self.lock = threading.Lock()
        self.event_times: list[float] = []
        self.event_signs: list[float] = []
        self.reads: list[tuple[float, bool, float]] = []
        self.rng = np.random.default_rng(seed)
        self.events, self.period = events, period
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _feed(self, value: int) -> None:
        report = bytes([1]) + struct.pack("<6h", 0, value, 0, 0, 0, 0)
        with self.lock:
            self.parser.feed(report)

    def _run(self) -> None:
        time.sleep(self.period * 2)
        for k in range(self.events):
            time.sleep(self.rng.uniform(1.0, 2.0) * self.period)  # random phase against the control ticks
            value = -300 if k % 2 else 300
            with self.lock:
                self.event_times.append(time.perf_counter())
                self.event_signs.append(float(np.sign(value)))
            self._feed(value)
            time.sleep(self.hold_periods * self.period)
            self._feed(0)
        time.sleep(self.period * 2)
        self.done.set()

    def read(self) -> TeleopCommand:
        with self.lock:
            command = command_from_parser(self.parser, self.config, time.perf_counter())
            self.reads.append((time.perf_counter(), command.active, float(np.sign(command.twist[0]))))
        return command


def timed_client(client):
    """Record when each command carrying a target is sent.

    ``FrankaEnv`` sends the target inside ``step`` (one round trip: the server applies the target on
    arrival, then waits for the env's tick and observes), so the stamp is taken as the call starts;
    it leaves out the loopback transit of the request (well under 1 ms, see benchmarks/env_step.py).
    """
    stamps: list[float] = []
    original_step, original_set_target = client.step, client.set_target

    def step(pose=None, *args, **kwargs):
        if pose is not None:
            stamps.append(time.perf_counter())
        return original_step(pose, *args, **kwargs)

    def set_target(pose, gripper=None):
        stamps.append(time.perf_counter())
        return original_set_target(pose, gripper)

    client.step, client.set_target = step, set_target
    return client, stamps


def percentiles(values, scale: float) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64) / scale
    if arr.size == 0:
        return {}
    return {"p50": round(float(np.percentile(arr, 50)), 3), "p99": round(float(np.percentile(arr, 99)), 3),
            "max": round(float(arr.max()), 3), "mean": round(float(arr.mean()), 3)}


def run(events: int, hz: float, use_server: bool) -> dict:
    from serl.envs.franka_env import FrankaEnv
    from serl.envs.intervention import InterventionWrapper
    from serl.envs.rewards import make_reward
    from serl.envs.tasks import get_task, with_overrides

    task = with_overrides(get_task("PandaPickCube"), control_hz=hz, max_episode_steps=100000)
    period = 1.0 / hz
    server = None
    path = "LocalRobot (in-process twin, real time)"
    if use_server:
        try:
            from serl.envs.http_client import HttpRobotClient

            from serl.cli.serve import SERVE_COMMAND

            server, url = start_robot_server(["--backend", "twin", "--task", task.name], SERVE_COMMAND)
            client = HttpRobotClient(url)
            path = "robot server over HTTP (loopback, real-time twin in its own process)"
        except Exception as err:  # fall back, but say so in the report
            path = f"LocalRobot (server failed: {err})"
            server = None
    if server is None:
        from robot_servers.backends.twin import TwinBackend, TwinConfig
        from robot_servers.guard import GuardConfig
        from serl.envs.robot_client import LocalRobot

        backend = TwinBackend(TwinConfig(scene=task.scene, lockstep=False))
        client = LocalRobot(backend, guard=GuardConfig(safety_box=task.safety_box))
    client, target_stamps = timed_client(client)
    device = SyntheticSpaceMouse(events, period)
    env = InterventionWrapper(FrankaEnv(client, task, reward_fn=make_reward(task)), device)
    try:
        env.reset(seed=0)
        target_stamps.clear()
        device.reads.clear()
        device.thread.start()
        steps = overruns = 0
        while not device.done.is_set():
            _, _, _, _, info = env.step(np.zeros(7, dtype=np.float32))
            overruns = info.get("overruns", 0)
            steps += 1
    finally:
        env.close()
        if server is not None:
            server.terminate()
            server.wait(timeout=20)
    reads = device.reads[: len(target_stamps)]
    input_to_target, read_to_target, missed = [], [], 0
    ends = device.event_times[1:] + [float("inf")]
    for event, sign, end in zip(device.event_times, device.event_signs, ends):
        for (read_time, active, read_sign), target_time in zip(reads, target_stamps):
            if event <= read_time < end and active and read_sign == sign:
                input_to_target.append(target_time - event)
                read_to_target.append(target_time - read_time)
                break
        else:
            missed += 1  # the push ended before the (stalled) control loop read the device
    return {"path": path, "control_hz": hz, "events": len(device.event_times), "matched": len(input_to_target),
            "missed": missed, "hold_periods": device.hold_periods, "steps": steps, "overruns": overruns,
            "input_to_target_periods": percentiles(input_to_target, period),
            "read_to_target_periods": percentiles(read_to_target, period),
            "read_to_target_ms": percentiles(read_to_target, 1e-3),
            "within_one_period_fraction": round(float(np.mean(np.asarray(input_to_target) <= period)), 3)
            if input_to_target else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: 10 events")
    parser.add_argument("--events", type=int, default=None, help="input events (default 200, quick 10)")
    parser.add_argument("--hz", type=float, default=10.0, help="control rate")
    parser.add_argument("--local", action="store_true", help="LocalRobot instead of the robot server")
    args = parser.parse_args()
    events = args.events or (10 if args.quick else 200)
    result = run(events, args.hz, use_server=not args.local)
    report = {
        "benchmark": "teleop_latency",
        "mode": "quick" if args.quick else "full",
        "device": "synthetic SpaceMouse HID reports through SpaceMouseParser",
        **result,
        "units": "control periods unless _ms",
        "note": "input_to_target includes the wait for the next control tick (uniform over one period); "
                "timings on a shared machine are noisy",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
