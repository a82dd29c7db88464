"""One real-arm style episode through the real robot server: reset, 50 targets at 10 Hz, gripper
open/close, joint reset. Shared by the ROS 2 and libfranka end-to-end tests (and the benchmark)."""

from __future__ import annotations

import time

import numpy as np

from robot_servers.cameras.opencv import OpenCVCamera, OpenCVCameraConfig
from robot_servers.cameras.threaded import ThreadedCamera, threaded_cameras
from robot_servers.clock import PeriodicClock
from robot_servers.control.safety import SafetyBox
from robot_servers.http import ServerConfig, create_app
from robot_servers.serve import ServerThread
from serl.envs.http_client import HttpRobotClient


def video_cameras(tmp_path, names=("wrist", "front")) -> dict[str, ThreadedCamera]:
    """Two looping OpenCV cameras on a generated video file, each on its capture thread."""
    import cv2

    path = str(tmp_path / "camera.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (160, 120))
    for i in range(30):
        writer.write(np.full((120, 160, 3), i * 8, np.uint8))
    writer.release()
    return threaded_cameras({name: OpenCVCamera(OpenCVCameraConfig(source=path, name=name, size=(64, 64), loop=True))
                             for name in names})


def wait_for(predicate, timeout: float, period: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return predicate()


def wait_value(predicate, what: str, timeout: float, *, alive=lambda: None, log=lambda: "", period: float = 0.02):
    """The first truthy value of ``predicate()``; ``alive()`` raises when the process under test died, and the
    AssertionError after ``timeout`` names ``what`` with the tail of ``log()``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        alive()
        time.sleep(period)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}:\n{log()[-3000:]}")


def run_episode(backend, cameras, home_q, steps: int = 50, hz: float = 10.0) -> dict:
    """Drive ``backend`` through a server on loopback; returns figures and asserts behaviour."""
    backend.recover()
    backend.joint_reset(duration=2.0)  # the safety box below is centred on the home pose
    start = backend.state().tcp_pose
    box = SafetyBox(position_low=tuple(start[:3] - 0.08), position_high=tuple(start[:3] + 0.08))
    app = create_app(backend, cameras, ServerConfig(safety_box=box, watchdog_timeout=1.0))
    with ServerThread(app) as server, HttpRobotClient(server.url, timeout=10.0) as client:
        assert client.health()["ok"], client.health()
        client.recover()
        client.joint_reset(duration=2.0)
        reset = client.state()
        assert np.abs(reset.q - np.asarray(home_q)).max() < 0.05, reset.q
        origin = reset.tcp_pose.copy()
        clock = PeriodicClock(1.0 / hz)
        errors_mm = []
        for i in range(steps):
            angle = 2 * np.pi * i / steps
            target = origin.copy()
            target[:3] += [0.03 * np.sin(angle), 0.03 * (1 - np.cos(angle)) / 2, -0.02 * np.sin(angle / 2)]
            client.set_target(target)
            if i % 10 == 0:
                frames = client.images()
                assert set(frames) == set(cameras) and all(f.shape == (64, 64, 3) for f, _ in frames.values())
            clock.wait()
            state = client.state()
            assert state.errors == [], state.errors
            errors_mm.append(1000 * np.linalg.norm(state.tcp_pose[:3] - target[:3]))
        outside = origin.copy()
        outside[0] += 0.5  # far outside the box: the server clips it to the box edge
        client.set_target(outside)
        assert wait_for(lambda: client.state().target_pose[0] <= box.position_high[0] + 1e-6, 2.0)
        client.set_target(origin)
        assert wait_for(lambda: np.linalg.norm(client.state().tcp_pose[:3] - origin[:3]) < 0.006, 6.0), (
            client.state().tcp_pose[:3] - origin[:3])
        client.set_gripper(0.07)
        assert wait_for(lambda: client.state().gripper_width > 0.06, 6.0)
        client.set_gripper(0.0)
        assert wait_for(lambda: client.state().gripper_width < 0.012, 6.0)
        client.joint_reset(duration=2.0)
        final = client.state()
        assert np.abs(final.q - np.asarray(home_q)).max() < 0.05
        assert final.errors == [] and client.health()["ok"]
    return {"steps": steps, "late_periods": clock.overruns, "tracking_error_mm_median": float(np.median(errors_mm)),
            "tracking_error_mm_max": float(np.max(errors_mm))}
