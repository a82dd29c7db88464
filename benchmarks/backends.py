"""Real-arm backends on loopback, with the real libraries.

libfranka (franky's C++ loop) and libfranka-torque (our law in a Python torque loop process) against
franky-sim, one after the other:
- the fraction of the simulator's 1 kHz torque cycles that got a fresh command from the client
  (target: at least 99.9 %), over a window during which the HTTP server answers /state at 10 Hz and
  serves two camera threads (OpenCV on a generated video);
- a 5 cm target step: final error and settling time (target: within 5 mm).

ROS 2 (rclpy, DDS on loopback) against the twin node:
- target-to-command latency (HTTP POST /target → PoseStamped delivered to a subscriber on
  ``target_pose``) p50/p99;
- state age at the server;
- a 100-step episode at 10 Hz through the HTTP server, counting missed control periods (target: 0).

Prints one JSON object. ``--quick`` shortens every window (CI smoke run, about 30 s). Figures from a
shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import tempfile
import threading
import time

import numpy as np

from robot_servers.clock import PeriodicClock


def percentiles(values, unit_scale: float = 1000.0) -> dict:
    arr = np.asarray(values, dtype=np.float64) * unit_scale
    if arr.size == 0:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)),
            "max": float(arr.max()), "n": int(arr.size)}


def video_cameras(directory: str):
    import cv2

    from robot_servers.cameras.opencv import OpenCVCamera, OpenCVCameraConfig
    from robot_servers.cameras.threaded import threaded_cameras

    path = os.path.join(directory, "camera.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (640, 480))
    for i in range(30):
        frame = np.zeros((480, 640, 3), np.uint8)
        frame[:, : 20 * i] = (0, 128, 255)
        writer.write(frame)
    writer.release()
    return threaded_cameras({name: OpenCVCamera(OpenCVCameraConfig(source=path, name=name, size=(128, 128), loop=True))
                             for name in ("wrist", "front")})


@contextlib.contextmanager
def robot_server(backend, cameras):
    from robot_servers.http import ServerConfig, create_app
    from robot_servers.serve import ServerThread
    from serl.envs.http_client import HttpRobotClient

    app = create_app(backend, cameras, ServerConfig(watchdog_timeout=None))
    with ServerThread(app) as server, HttpRobotClient(server.url, timeout=10.0) as client:
        yield client


def poll_state(client, hz: float, stop: threading.Event, ages: list, images: bool = True) -> None:
    """A 10 Hz reader, as an actor would be: state (and camera frames) over HTTP."""
    clock = PeriodicClock(1.0 / hz)
    while not stop.is_set():
        client.state()
        if images:
            client.images()
        ages.append(time.monotonic() - clock.next_tick)
        clock.wait(stop.wait)


def bench_libfranka(quick: bool, backend_name: str = "libfranka") -> dict:
    from robot_servers.backends import make_backend
    from robot_servers.backends.libfranka_sim import running_simulator

    window = 2.0 if quick else 10.0
    last = 1 + (os.getpid() // 50) % 120 + (120 if backend_name == "libfranka-torque" else 0)  # one simulator each
    host = f"127.0.{200 + os.getpid() % 50}.{last}"
    with tempfile.TemporaryDirectory() as tmp:
        stats_path = os.path.join(tmp, "stats.json")

        def stats() -> dict:
            with open(stats_path) as f:
                return json.load(f)

        cameras = video_cameras(tmp)
        with running_simulator(host, stats=stats_path), \
                make_backend(backend_name, hostname=host) as backend, \
                robot_server(backend, cameras) as client:
            time.sleep(0.5)
            stop = threading.Event()
            reads: list = []
            reader = threading.Thread(target=poll_state, args=(client, 10.0, stop, reads), daemon=True)
            reader.start()
            time.sleep(0.3)  # the stats file is rewritten every 0.2 s
            before, robot_t0, wall_t0 = stats(), backend.state().timestamp, time.monotonic()
            time.sleep(window)
            after, robot_t1, wall_t1 = stats(), backend.state().timestamp, time.monotonic()
            stop.set()
            reader.join()
            ticks = after["torque_ticks"] - before["torque_ticks"]
            on_time = after["torque_ticks_on_time"] - before["torque_ticks_on_time"]
            frames = {name: camera.frames_captured for name, camera in cameras.items()}
            faults = list(backend.state().errors)  # reported, then cleared for the step: a stall is a finding
            if faults:
                backend.recover()

            start = backend.state().tcp_pose
            target = start.copy()
            target[0] += 0.05
            backend.set_target(target)
            t0 = time.monotonic()
            settled_at, errors = None, []
            while time.monotonic() - t0 < (3.0 if quick else 5.0):
                error = float(np.linalg.norm(backend.state().tcp_pose[:3] - target[:3]))
                errors.append(error)
                if error < 0.005 and settled_at is None:
                    settled_at = time.monotonic() - t0
                elif error >= 0.005:
                    settled_at = None
                time.sleep(0.01)
            final_error = errors[-1]
        for camera in cameras.values():
            camera.close()
    fraction = on_time / ticks if ticks else None
    return {
        "window_s": window,
        "torque_cycles": ticks,
        "cycles_on_time": on_time,
        "fraction_on_time": fraction,
        "target_fraction_on_time": 0.999,
        "meets_target": bool(fraction is not None and fraction >= 0.999),
        "robot_time_per_wall_time": (robot_t1 - robot_t0) / (wall_t1 - wall_t0),
        "http_state_and_images_reads": len(reads),
        "camera_frames_captured": frames,
        "faults_during_window": faults,
        "step_5cm": {"final_error_mm": 1000 * final_error, "settle_time_s": settled_at,
                     "within_5mm": final_error < 0.005},
    }


def bench_ros2(quick: bool) -> dict:
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from rclpy.executors import SingleThreadedExecutor

    from robot_servers.backends.ros2 import Ros2Backend, Ros2Config
    from robot_servers.ros2.network import init_context
    from robot_servers.ros2.twin_node import running_twin_node

    domain = 1 + (os.getpid() // 7) % 100  # 0..101: DDS ports stay below Linux's ephemeral range
    steps = 30 if quick else 100
    with running_twin_node(domain):
        context = None
        try:
            # the probe plays the controller's side: when does a target published by the server arrive?
            context = init_context(domain)
            probe = rclpy.create_node("latency_probe", context=context)
            arrivals: dict[float, float] = {}
            probe.create_subscription(PoseStamped, "target_pose",
                                      lambda m: arrivals.setdefault(round(m.pose.position.y, 7), time.monotonic()), 100)
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(probe)
            spinning = threading.Event()
            spinning.set()
            spinner = threading.Thread(target=lambda: [executor.spin_once(timeout_sec=0.05) for _ in iter(spinning.is_set, False)],
                                       daemon=True)
            spinner.start()
            with Ros2Backend(Ros2Config(domain_id=domain)) as backend, robot_server(backend, {}) as client:
                client.recover()
                origin = client.state().tcp_pose.copy()
                clock = PeriodicClock(0.1)
                latencies, ages, step_durations = [], [], []
                for i in range(steps):
                    step_start = time.monotonic()
                    target = origin.copy()
                    target[1] += round(0.02 * np.sin(2 * np.pi * i / 50) + 1e-6 * (i + 1), 7)
                    sent = time.monotonic()
                    client.set_target(target)
                    state = client.state()
                    ages.append(time.monotonic() - state.timestamp)  # same process: same monotonic clock
                    step_durations.append(time.monotonic() - step_start)
                    clock.wait()
                    arrived = arrivals.get(round(target[1], 7))
                    if arrived is not None:
                        latencies.append(arrived - sent)
                final = client.state()
                tracking_error = float(np.linalg.norm(final.tcp_pose[:3] - target[:3]))
                errors = final.errors
            spinning.clear()
            spinner.join(timeout=2.0)
            probe.destroy_node()
        finally:
            if context is not None:
                context.try_shutdown()
    return {
        "episode_steps": steps,
        "control_hz": 10.0,
        "missed_periods": clock.overruns,
        "target_missed_periods": 0,
        "step_time_ms": percentiles(step_durations),
        "target_to_command_latency_ms": percentiles(latencies),
        "targets_delivered": f"{len(latencies)}/{steps}",
        "state_age_at_server_ms": percentiles(ages),
        "final_tracking_error_mm": 1000 * tracking_error,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows (CI smoke run)")
    parser.add_argument("--only", choices=["libfranka", "libfranka-torque", "ros2"], default=None)
    args = parser.parse_args()
    report: dict = {"benchmark": "backends", "quick": args.quick,
                    "note": "loopback on a shared machine; wall-clock figures are noisy"}
    available = {"libfranka": all(importlib.util.find_spec(m) for m in ("franky", "franky_sim")),
                 "libfranka-torque": all(importlib.util.find_spec(m) for m in ("pylibfranka", "franky_sim")),
                 "ros2": all(importlib.util.find_spec(m) for m in ("rclpy", "mujoco"))}
    benches = (("libfranka", bench_libfranka), ("libfranka-torque", lambda quick: bench_libfranka(quick, "libfranka-torque")),
               ("ros2", bench_ros2))
    for name, bench in benches:
        if args.only not in (None, name):
            continue
        if not available[name]:
            report[name] = {"skipped": f"extra for {name} not installed"}
            continue
        started = time.monotonic()
        report[name] = bench(args.quick)
        report[name]["bench_wall_s"] = time.monotonic() - started
    franky, torque = report.get("libfranka", {}), report.get("libfranka-torque", {})
    if franky.get("fraction_on_time") and torque.get("fraction_on_time"):
        report["torque_loop_on_time_vs_franky"] = torque["fraction_on_time"] / franky["fraction_on_time"]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
