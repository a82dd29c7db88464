"""Run franky-sim (MuJoCo FR3 behind the real libfranka protocol) and count on-time control cycles.

``python -m robot_servers.backends.libfranka_sim --hostname 127.0.0.2 --stats stats.json``

It prints ``READY <hostname>`` once clients may connect. While a torque controller is running, each
1 ms simulator tick either has a fresh command from the client (on time) or reuses the previous one
(missed); the counts are written as JSON to ``--stats`` every 0.2 s and on SIGTERM. Tests and
``benchmarks/backends.py`` run it as a subprocess so a simulator crash cannot take them down.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Iterator

from robot_servers.processes import running_until_ready


@contextlib.contextmanager
def running_simulator(hostname: str = "127.0.0.1", stats: str | None = None, timeout: float = 30.0) -> Iterator[subprocess.Popen]:
    """Start the simulator as a subprocess on ``hostname``; wait until it accepts clients; stop it on exit."""
    command = [sys.executable, "-m", "robot_servers.backends.libfranka_sim", "--hostname", hostname]
    if stats:
        command += ["--stats", stats]
    with running_until_ready(command, f"franky-sim on {hostname}", timeout) as process:
        yield process


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hostname", default="127.0.0.1", help="loopback address to bind (ports 1337/1338)")
    parser.add_argument("--stats", default=None, help="write cycle counts here as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    try:
        from franky_sim import SimulationServer
        from franky_sim.franka_robot_server import ControlMode
        from franky_sim.mujoco_simulator import MujocoSimulator
    except ImportError as exc:
        raise SystemExit(f"franky-sim is not installed ({exc}); install the 'franka-sim' extra") from exc

    counts = {"ticks": 0, "torque_ticks": 0, "torque_ticks_on_time": 0, "wall_s": 0.0}
    stop = threading.Event()

    def write_stats() -> None:
        if args.stats:
            tmp = f"{args.stats}.tmp"
            with open(tmp, "w") as f:
                json.dump(counts, f)
            os.replace(tmp, args.stats)

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    with MujocoSimulator(enable_visualization=False) as sim:
        robot = sim.add_robot()
        original_torque_control = robot.torque_control
        robot_servers = []

        def counting_torque_control(torques, has_new_command=True):
            # Joint-position holding in idle mode is also torque-driven inside the simulator;
            # only ticks where a client streams torques count.
            if robot_servers and getattr(robot_servers[0], "_FrankaRobotServer__control_mode", None) == ControlMode.TORQUE:
                counts["torque_ticks"] += 1
                counts["torque_ticks_on_time"] += int(bool(has_new_command))
            return original_torque_control(torques, has_new_command=has_new_command)

        robot.torque_control = counting_torque_control
        with SimulationServer(sim, hostname_candidates=[args.hostname]) as server:
            robot_servers.extend(server.robot_servers)
            print(f"READY {robot.hostname}", flush=True)
            start = last_write = time.monotonic()
            while not stop.is_set():
                server.run_once()
                counts["ticks"] += 1
                now = time.monotonic()
                if now - last_write > 0.2:
                    counts["wall_s"] = now - start
                    write_stats()
                    last_write = now
            counts["wall_s"] = time.monotonic() - start
            write_stats()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
