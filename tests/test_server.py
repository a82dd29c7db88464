"""Robot server on loopback (real uvicorn, real MuJoCo twin): validation, safety, auth, watchdog, cameras, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import msgpack
import numpy as np
import pytest

pytest.importorskip("robot_servers.backends.twin")  # sets MUJOCO_GL before mujoco loads

from backend_episode import wait_for as _wait_until  # noqa: E402
from robot_servers.backends.twin import TwinBackend, TwinConfig  # noqa: E402
from robot_servers.cameras.threaded import threaded_cameras  # noqa: E402
from robot_servers.control.safety import SafetyBox  # noqa: E402
from robot_servers.http import ServerConfig, create_app  # noqa: E402
from robot_servers.serve import ServeConfig, ServerThread  # noqa: E402
from robot_servers.wire import decode_images, unpackb  # noqa: E402

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DOWN = [1.0, 0.0, 0.0, 0.0]
BOX = SafetyBox(position_low=(0.2, -0.3, 0.05), position_high=(0.6, 0.3, 0.6),
                euler_low=(-0.3, -0.3, -1.0), euler_high=(0.3, 0.3, 1.0), center_quat=tuple(DOWN))
HOME = [0.307, 0.0, 0.487]


def _serve(backend, cameras=None, **config):
    config.setdefault("token", TOKEN)
    config.setdefault("safety_box", BOX)
    return ServerThread(create_app(backend, cameras or {}, ServerConfig(**config))).start()


@pytest.fixture(scope="module")
def lockstep():
    """A lockstep twin with two cameras behind a token-protected server (clip mode)."""
    backend = TwinBackend(TwinConfig(scene="pick_cube", lockstep=True, cameras=("wrist", "front"), image_size=(64, 64)))
    server = _serve(backend, backend.cameras())
    client = httpx.Client(base_url=server.url, headers=AUTH, timeout=10)
    yield backend, server, client
    client.close()
    server.stop()
    backend.close()


def _snapshot(backend):
    state = backend.state()
    return state.target_pose.copy(), state.gripper_width, state.timestamp


def _raw_post(client, path, text):
    return client.post(path, content=text.encode(), headers={"content-type": "application/json"})


BAD_REQUESTS = [
    ("/target", '{"pose": [0.4, 0, NaN, 1, 0, 0, 0]}', "pose[2]"),
    ("/target", '{"pose": [0.4, 0, 0.3, 1, 0, 0, Infinity]}', "pose[6]"),
    ("/target", '{"pose": [0.4, 0, -Infinity, 1, 0, 0, 0]}', "pose[2]"),
    ("/target", '{"pose": [0.4, 0, 0.3, 1, 0, 0]}', "pose"),
    ("/target", '{"pose": [0.4, 0, 0.3, 1, 0, 0, 0, 0]}', "pose"),
    ("/target", '{"pose": [[0.4, 0, 0.3, 1, 0, 0, 0]]}', "pose[0]"),
    ("/target", '{"pose": [0.4, 0, 0.3, 2, 0, 0, 0]}', "quaternion"),
    ("/target", '{"pose": [0.4, 0, 0.3, 0, 0, 0, 0]}', "quaternion"),
    ("/target", '{"pose": ["0.4", 0, 0.3, 1, 0, 0, 0]}', "pose[0]"),
    ("/target", '{"pose": [0.4, 0, 0.3, 1, 0, 0, 0], "gripper": 0.5}', "gripper"),
    ("/target", '{"pose": [0.4, 0, 0.3, 1, 0, 0, 0], "speed": 1}', "speed"),
    ("/target", '{}', "pose"),
    ("/target", 'not json', "body"),
    ("/gripper", '{"width": NaN}', "width"),
    ("/gripper", '{"width": -0.01}', "width"),
    ("/gripper", '{"width": true}', "width"),
    ("/impedance", '{"translational_stiffness": [7000, 0, 0]}', "translational_stiffness[0]"),
    ("/impedance", '{"rotational_damping": [1, 2]}', "rotational_damping"),
    ("/impedance", '{"nullspace_stiffness": Infinity}', "nullspace_stiffness"),
    ("/impedance", '{"translational_damping": [0, 50, 50]}', "translational_damping[0]"),
    ("/impedance", '{"rotational_damping": [5, -1, 5]}', "rotational_damping[1]"),
    ("/joint_reset", '{"q": [0, 0, 0, -2, 0, 2]}', "q"),
    ("/joint_reset", '{"q": [0, 0, 0, -2, 0, 2, NaN]}', "q[6]"),
    ("/joint_reset", '{"q": [3.0, 0, 0, -2, 0, 2, 0.8]}', "q"),  # beyond the Panda's joint-1 limit
    ("/joint_reset", '{"duration": -1}', "duration"),
    ("/step", '{"pose": [0.4, 0, 0.3, 1, 0, 0, NaN], "advance": 0.1}', "pose[6]"),
    ("/step", '{"advance": 100}', "advance"),
    ("/sim/advance", '{"seconds": NaN}', "seconds"),
    ("/sim/advance", '{"seconds": 0}', "seconds"),
    ("/sim/reset_scene", '{"seed": -3}', "seed"),
    ("/sim/reset_robot", '{"q": [0, 0, 0, -2, 0, 2, 9.0]}', "q[6]"),
    ("/sim/reset_robot", '{"q": [0, 0, 0, 0.5, 0, 2, 0.8]}', "q"),  # joint 4 must stay negative on a Panda
    ("/step", '{"pose": [0.4, 0, 0.3, 1, 0, 0, 0], "wait": 0.05}', "wait"),  # lockstep advances, never waits
]


@pytest.mark.parametrize("path,body,field", BAD_REQUESTS, ids=[f"{p}:{b[:40]}" for p, b, _ in BAD_REQUESTS])
def test_bad_input_is_a_422_naming_the_field_and_changes_nothing(lockstep, path, body, field):
    backend, _, client = lockstep
    before = _snapshot(backend)
    response = _raw_post(client, path, body)
    assert response.status_code == 422, response.text
    message = response.json()["message"] if "message" in response.json() else json.dumps(response.json())
    assert field in message, message
    after = _snapshot(backend)
    np.testing.assert_array_equal(before[0], after[0])
    assert before[1:] == after[1:]


def test_valid_commands_reach_the_backend(lockstep):
    backend, _, client = lockstep
    pose = [0.35, 0.05, 0.4, *DOWN]
    response = client.post("/target", json={"pose": pose, "gripper": 0.02})
    assert response.status_code == 200 and response.json()["clipped"] is False
    np.testing.assert_allclose(backend.state().target_pose, pose, atol=1e-12)
    # a near-unit quaternion is normalised, not rejected
    response = client.post("/target", json={"pose": [0.35, 0.05, 0.4, 1.02, 0, 0, 0]})
    assert response.status_code == 200
    np.testing.assert_allclose(backend.state().target_pose[3:], DOWN, atol=1e-12)
    assert client.post("/sim/advance", json={"seconds": 0.5}).status_code == 200
    state = client.get("/state").json()
    assert state["timestamp"] == pytest.approx(backend.state().timestamp)
    assert np.linalg.norm(np.subtract(state["tcp_pose"][:3], pose[:3])) < 0.05  # moving towards it
    assert state["gripper_width"] < 0.08
    stiff = {"translational_stiffness": [3000.0, 3000.0, 3000.0], "translational_clip": [0.02, 0.02, 0.02]}
    assert client.post("/impedance", json=stiff).json()["impedance"]["translational_stiffness"] == [3000.0] * 3


def test_targets_outside_the_box_are_clipped_or_rejected():
    backend = TwinBackend(TwinConfig(scene="empty", lockstep=True, cameras=()))
    outside = [0.9, 0.0, 0.3, *DOWN]
    try:
        with _serve(backend, on_violation="clip") as server:
            response = httpx.post(server.url + "/target", json={"pose": outside}, headers=AUTH)
            assert response.status_code == 200 and response.json()["clipped"] is True
            np.testing.assert_allclose(backend.state().target_pose[:3], [0.6, 0.0, 0.3])
        before = backend.state().target_pose.copy()
        with _serve(backend, on_violation="reject") as server:
            tilted = [0.4, 0.0, 0.3, *np.array([0.0, 0.7071068, 0.0, 0.7071068])]  # 90° off the downward axis
            for pose, words in ((outside, "position x=0.9000"), (tilted, "orientation")):
                response = httpx.post(server.url + "/target", json={"pose": pose}, headers=AUTH)
                assert response.status_code == 422
                assert response.json()["detail"][0]["loc"] == ["body", "pose"]
                assert "safety box" in response.json()["detail"][0]["msg"] and words in response.json()["detail"][0]["msg"]
                np.testing.assert_array_equal(backend.state().target_pose, before)
    finally:
        backend.close()


def test_token_guards_every_path(lockstep):
    _, server, client = lockstep
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/state", "/target", "/gripper", "/impedance", "/joint_reset", "/recover", "/images", "/health",
            "/observe", "/step", "/sim/advance", "/sim/scene", "/sim/reset_scene", "/sim/reset_robot"} <= set(paths)
    for path, methods in list(paths.items()) + [("/openapi.json", {"get": None}), ("/docs", {"get": None})]:
        for method in methods:
            missing = httpx.request(method, server.url + path)
            assert missing.status_code == 401 and "missing bearer token" in missing.json()["detail"]
            assert missing.headers["www-authenticate"] == "Bearer"
            wrong = httpx.request(method, server.url + path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 403 and "invalid bearer token" in wrong.json()["detail"]
            basic = httpx.request(method, server.url + path, headers={"Authorization": f"Basic {TOKEN}"})
            assert basic.status_code == 403


def test_images_are_all_cameras_in_one_binary_response(lockstep):
    backend, _, client = lockstep
    response = client.get("/images")
    assert response.headers["content-type"] == "application/msgpack"
    frames = decode_images(unpackb(response.content))
    assert set(frames) == {"wrist", "front"}
    for frame, timestamp in frames.values():
        assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8 and frame.std() > 1.0
        assert timestamp == pytest.approx(backend.state().timestamp)
    only = decode_images(unpackb(client.get("/images", params={"camera": "front"}).content))
    assert set(only) == {"front"}
    np.testing.assert_array_equal(only["front"][0], frames["front"][0])  # same sim instant, same frame
    unknown = client.get("/images", params={"camera": "top"})
    assert unknown.status_code == 422 and "top" in unknown.json()["detail"][0]["msg"]
    observed = msgpack.unpackb(client.get("/observe").content)
    assert set(observed["images"]) == {"wrist", "front"} and len(observed["state"]["tcp_pose"]) == 7


def test_step_combines_target_advance_and_observation(lockstep):
    backend, _, client = lockstep
    t0 = backend.state().timestamp
    pose = [0.4, 0.0, 0.35, *DOWN]
    payload = msgpack.unpackb(client.post("/step", json={"pose": pose, "gripper": 0.08, "advance": 0.1}).content)
    assert payload["state"]["timestamp"] == pytest.approx(t0 + 0.1)
    assert payload["target"] == pose and payload["clipped"] is False
    assert set(payload["images"]) == {"wrist", "front"}
    assert msgpack.unpackb(client.post("/step", json={"images": False}).content)["images"] == {}


def test_measured_pose_leaving_the_box_holds_until_recover():
    backend = TwinBackend(TwinConfig(scene="empty", lockstep=True, cameras=()))
    box = SafetyBox(position_low=(0.2, -0.3, 0.3), position_high=(0.6, 0.3, 0.6), center_quat=tuple(DOWN))
    try:
        with _serve(backend, safety_box=box, measured_tolerance=0.01) as server:
            client = httpx.Client(base_url=server.url, headers=AUTH)
            # Something outside the server (a collision, a human) drags the arm below the box floor.
            backend.set_target([0.307, 0.0, 0.2, *DOWN])
            client.post("/sim/advance", json={"seconds": 1.5})
            health = client.get("/health").json()
            assert health["safety"]["stopped"] and "position z" in health["safety"]["reason"] and not health["ok"]
            state = backend.state()
            assert state.target_pose[2] > 0.28  # held where it crossed (z ≈ 0.29), not at the 0.2 target
            served = client.get("/state").json()
            assert any(error.startswith("safety_stop") for error in served["errors"])
            blocked = client.post("/target", json={"pose": [0.4, 0.0, 0.4, *DOWN]})
            assert blocked.status_code == 409 and "recover" in blocked.json()["detail"]
            np.testing.assert_array_equal(backend.state().target_pose, state.target_pose)
            assert client.post("/recover").status_code == 200
            assert not client.get("/health").json()["safety"]["stopped"]
            # back inside the box: commands flow again and the check re-arms once inside
            assert client.post("/target", json={"pose": [0.4, 0.0, 0.4, *DOWN]}).status_code == 200
            client.post("/sim/advance", json={"seconds": 1.5})
            health = client.get("/health").json()
            assert health["safety"]["armed"] and not health["safety"]["stopped"] and health["ok"]
            client.close()
    finally:
        backend.close()


def test_watchdog_holds_the_arm_within_1mm_and_resumes():
    backend = TwinBackend(TwinConfig(scene="empty", lockstep=False, cameras=()))
    try:
        with _serve(backend, watchdog_timeout=0.3) as server:
            client = httpx.Client(base_url=server.url, headers=AUTH)
            goal = [0.35, 0.05, 0.45, *DOWN]

            def settled() -> bool:  # a policy at 10 Hz, until the arm has settled there...
                client.post("/target", json={"pose": goal})
                time.sleep(0.1)
                state = backend.state()
                return bool(np.linalg.norm(state.tcp_pose[:3] - goal[:3]) < 3e-3
                            and np.linalg.norm(state.tcp_vel[:3]) < 2e-3)

            assert _wait_until(settled, timeout=60.0, period=0.0), "the arm never settled at the goal"
            watchdog = client.get("/health").json()["watchdog"]
            assert not watchdog["holding"]
            stopped_at = backend.state().tcp_pose[:3]  # ...then it stops sending

            def holding() -> bool:
                return client.get("/health").json()["watchdog"]["holding"]

            assert _wait_until(holding, timeout=30.0), "the watchdog never tripped"
            assert client.get("/health").json()["watchdog"]["trips"] == watchdog["trips"] + 1
            held = backend.state()
            # The hold starts where the arm is when the watchdog trips: until then the last target still
            # applies, so the arm may finish settling (within the 3 mm above), but never heads off.
            assert np.linalg.norm(held.target_pose[:3] - held.tcp_pose[:3]) < 1e-3
            assert np.linalg.norm(held.tcp_pose[:3] - stopped_at) < 3e-3
            time.sleep(0.5)
            assert np.linalg.norm(backend.state().tcp_pose[:3] - held.tcp_pose[:3]) < 1e-3
            client.post("/target", json={"pose": goal})
            assert not holding()
            client.close()
    finally:
        backend.close()


def test_threaded_cameras_serve_the_newest_frame_without_waiting():
    # 480x640 frames take several ms each to render here; reads must not wait for one.
    backend = TwinBackend(TwinConfig(scene="pick_cube", lockstep=False, cameras=("wrist", "front"),
                                     image_size=(480, 640)))
    cameras = threaded_cameras(backend.cameras(), max_fps=20, shared_thread=True)
    try:
        first = {name: camera.read() for name, camera in cameras.items()}
        renders, latencies = [], []
        for _ in range(3):
            start = time.perf_counter()
            cameras["front"].camera.read()  # what a read would cost if it waited for a new frame
            renders.append(time.perf_counter() - start)
        for _ in range(20):
            start = time.perf_counter()
            frames = {name: camera.read() for name, camera in cameras.items()}
            latencies.append(time.perf_counter() - start)
        assert np.median(latencies) < np.median(renders) / 5, (latencies, renders)
        time.sleep(0.3)
        later = {name: camera.read() for name, camera in cameras.items()}
        for name in cameras:
            assert later[name][1] > first[name][1]  # newer sim time: the thread keeps capturing
            assert later[name][0].shape == (480, 640, 3) and not later[name][0].flags.writeable
        assert frames
    finally:
        for camera in cameras.values():
            camera.close()
        backend.close()


def test_real_time_server_has_no_advance_endpoint():
    backend = TwinBackend(TwinConfig(scene="empty", lockstep=False, cameras=()))
    try:
        with _serve(backend, watchdog_timeout=None) as server:
            paths = httpx.get(server.url + "/openapi.json", headers=AUTH).json()["paths"]
            assert "/sim/advance" not in paths and "/sim/scene" in paths
            response = httpx.post(server.url + "/step", json={"advance": 0.1}, headers=AUTH)
            assert response.status_code == 422 and "lockstep" in response.json()["detail"][0]["msg"]
            response = httpx.post(server.url + "/step", json={"wait": -0.1}, headers=AUTH)
            assert response.status_code == 422 and "wait" in response.json()["message"]
            before = backend.state()
            start = time.perf_counter()
            response = httpx.post(server.url + "/step", json={"pose": [0.35, 0.0, 0.45, *DOWN], "wait": 0.3,
                                                              "images": False, "scene": True}, headers=AUTH)
            elapsed = time.perf_counter() - start
            payload = msgpack.unpackb(response.content)
            assert response.status_code == 200 and elapsed >= 0.3
            assert payload["target"] == [0.35, 0.0, 0.45, *DOWN] and payload["scene"] == {}
            # observed after the wait: the twin ran on and the arm set off towards the target (how far it got
            # in 0.3 s of wall time depends on how much CPU the twin's thread had)
            observed = payload["state"]
            assert observed["timestamp"] > before.timestamp
            assert observed["tcp_pose"][0] > before.tcp_pose[0] + 1e-4
    finally:
        backend.close()


class _CountRequests:
    """Pure ASGI middleware recording (method, path) of every request."""

    def __init__(self, app, seen: list):
        self.app, self.seen = app, seen

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            self.seen.append((scope["method"], scope["path"]))
        await self.app(scope, receive, send)


@pytest.mark.parametrize("lockstep_twin", [True, False], ids=["lockstep", "real_time"])
def test_env_step_is_one_round_trip(lockstep_twin):
    from serl.envs.franka_env import FrankaEnv
    from serl.envs.http_client import HttpRobotClient
    from serl.envs.task_config import CameraSpec
    from serl.envs.tasks import get_task, make_reward, with_overrides

    task = with_overrides(get_task("PandaPickCube"), control_hz=20.0, reset_hooks=())
    backend = TwinBackend(TwinConfig(scene="pick_cube", lockstep=lockstep_twin, cameras=("wrist",), image_size=(32, 32)))
    cameras = backend.cameras() if lockstep_twin else threaded_cameras(backend.cameras(), shared_thread=True)
    task = with_overrides(task, cameras=(CameraSpec("wrist", size=(32, 32)),))
    app = create_app(backend, cameras, ServerConfig(safety_box=task.safety_box, watchdog_timeout=None))
    seen: list = []
    app.add_middleware(_CountRequests, seen=seen)
    try:
        with ServerThread(app) as server:
            env = FrankaEnv(HttpRobotClient(server.url), task, reward_fn=make_reward(task))
            env.reset(seed=0)
            seen.clear()
            infos = [env.step(np.array([0.5, 0, 0, 0, 0, 0, 0]))[4] for _ in range(6)]
            assert seen == [("POST", "/step")] * 6  # target, advance/wait, state, scene for the reward: one trip
            if not lockstep_twin:
                errors = [info["control_period_error"] for info in infos[1:]]
                assert abs(float(np.median(errors))) < 0.01  # loose: two shared cores
            env.close()
    finally:
        for camera in cameras.values():
            camera.close()
        backend.close()


def test_config_defaults_bind_loopback():
    assert ServeConfig().host == "127.0.0.1" and ServeConfig().watchdog_timeout == 0.5
    with pytest.raises(ValueError, match="on_violation"):
        ServerConfig(on_violation="ignore")


def test_cli_serves_a_task_and_warns_about_open_binding(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    env.pop("SERL_ROBOT_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "serl.cli.main", "serve", "--backend", "twin", "--task", "PandaPickCube",
         "--port", str(port), "--host", "0.0.0.0", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert health is not None, proc.stdout.read() if proc.poll() is not None else "server did not start"
        assert health["backend"] == "twin" and health["lockstep"] is False
        assert health["safety"]["box"]["position_high"] == [0.7, 0.2, 0.35]  # PandaPickCube's box
        assert health["watchdog"]["active"]
        response = httpx.post(f"http://127.0.0.1:{port}/target", json={"pose": [0.9, 0, 0.2, *DOWN]})
        assert response.json()["target"][0] == pytest.approx(0.7)
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=20)
    assert "WITHOUT a token" in output


def test_backend_registry_builds_lazily_and_names_missing_extras():
    from robot_servers.backends import backend_names, make_backend, register_backend

    assert {"twin", "ros2", "libfranka"} <= set(backend_names())
    with pytest.raises(ValueError, match="unknown backend 'ur5'"):
        make_backend("ur5")

    def needs_missing_library(**options):
        import serl_no_such_robot_sdk  # noqa: F401

    register_backend("missing", needs_missing_library, extra="franka")
    with pytest.raises(ImportError, match=r"serl_no_such_robot_sdk.*serl-suite\[franka\]"):
        make_backend("missing")
    with make_backend("twin", scene="empty", lockstep=True, cameras=()) as twin:
        assert twin.lockstep and twin.state().tcp_pose.shape == (7,)


def test_a_failing_camera_is_reported_retried_and_does_not_stop_the_others(tmp_path):
    from test_cameras import write_video

    from robot_servers.cameras.opencv import OpenCVCamera, OpenCVCameraConfig

    front_path = tmp_path / "front.avi"
    write_video(front_path, frames=3, fps=100.0)  # ends after ~30 ms
    wrist_path = write_video(tmp_path / "wrist.avi", frames=10)
    front = OpenCVCamera(OpenCVCameraConfig(source=str(front_path), name="front", size=(16, 16)))
    wrist = OpenCVCamera(OpenCVCameraConfig(source=wrist_path, name="wrist", size=(16, 16), loop=True))
    front_path.unlink()  # the source disappears: the open capture ends, reopening fails
    cameras = threaded_cameras({"front": front, "wrist": wrist}, max_fps=50)
    backend = TwinBackend(TwinConfig(scene="empty", lockstep=True, cameras=()))
    try:
        with _serve(backend, cameras) as server, httpx.Client(base_url=server.url, headers=AUTH) as client:
            assert _wait_until(lambda: not client.get("/health").json()["ok"], 5.0)
            health = client.get("/health").json()
            assert any("'front'" in error for error in health["errors"])
            observed = msgpack.unpackb(client.get("/observe").content)
            assert set(observed["images"]) == {"wrist"}  # the other camera is still served
            assert any("'front'" in error for error in observed["state"]["errors"])
            stamp = observed["images"]["wrist"]["timestamp"]
            time.sleep(0.1)
            later = msgpack.unpackb(client.post("/step", json={"images": True}).content)
            assert later["images"]["wrist"]["timestamp"] > stamp  # and keeps capturing
            response = client.get("/images", params={"camera": "front"})
            assert response.status_code == 503 and "front" in response.json()["detail"]
            failures = cameras["front"].faults
            write_video(front_path, frames=30, fps=10.0)  # the source comes back (3 s of video)
            assert _wait_until(lambda: client.get("/health").json()["ok"], 5.0)  # retried with backoff: reopened
            frames = decode_images(unpackb(client.get("/images").content))
            assert set(frames) == {"front", "wrist"} and frames["front"][0].shape == (16, 16, 3)
            assert cameras["front"].faults == failures
    finally:
        for camera in cameras.values():
            camera.close()
        backend.close()


