"""HttpRobotClient against the real server on loopback: round trips, errors, restarts, and FrankaEnv
episodes through HTTP that match in-process episodes exactly."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("robot_servers.backends.twin")  # sets MUJOCO_GL before mujoco loads

from robot_servers.backends.base import ImpedanceParams  # noqa: E402
from robot_servers.backends.twin import TwinBackend, TwinConfig  # noqa: E402
from robot_servers.control.safety import SafetyBox  # noqa: E402
from robot_servers.http import ServerConfig, create_app  # noqa: E402
from robot_servers.serve import ServerThread  # noqa: E402
from serl.envs.franka_env import FrankaEnv, RobotClientError  # noqa: E402
from serl.envs.http_client import HttpRobotClient, RobotConnectionError  # noqa: E402
from serl.envs.tasks import make_reward, make_sim_env  # noqa: E402

DOWN = [1.0, 0.0, 0.0, 0.0]


def _twin(**overrides):
    config = dict(scene="pick_cube", lockstep=True, cameras=("wrist", "front"), image_size=(32, 32))
    config.update(overrides)
    return TwinBackend(TwinConfig(**config))


@pytest.fixture()
def served():
    backend = _twin()
    server = ServerThread(create_app(backend, backend.cameras(), ServerConfig(token="t0k"))).start()
    yield backend, server
    server.stop()
    backend.close()


def test_client_round_trips_every_call(served):
    backend, server = served
    with HttpRobotClient(server.url, token="t0k") as client:
        assert client.lockstep is True
        state = client.state()
        np.testing.assert_array_equal(state.tcp_pose, backend.state().tcp_pose)  # exact: JSON floats round-trip
        goal = state.tcp_pose.copy()
        goal[2] -= 0.05
        client.set_target(goal, gripper=0.04)
        client.advance(1.0)
        moved = client.state()
        assert moved.timestamp == pytest.approx(state.timestamp + 1.0)
        assert abs(moved.tcp_pose[2] - goal[2]) < 0.005 and moved.gripper_width < 0.06
        client.set_gripper(0.08)
        client.set_impedance(ImpedanceParams(translational_stiffness=(1000.0, 1000.0, 1000.0)))
        frames = client.images()
        assert set(frames) == {"wrist", "front"}
        assert all(f.shape == (32, 32, 3) and f.dtype == np.uint8 and f.flags.writeable for f, _ in frames.values())
        observed_state, observed_frames = client.observe()
        np.testing.assert_array_equal(observed_state.tcp_pose, client.state().tcp_pose)
        for name in frames:
            np.testing.assert_array_equal(observed_frames[name][0], frames[name][0])
        stepped, _ = client.step(goal, gripper=0.0, advance=0.1, images=False)
        assert stepped.timestamp == pytest.approx(moved.timestamp + 0.1)
        client.reset_scene(seed=7)
        first = client.scene()["cube"]
        client.reset_scene(seed=7)
        np.testing.assert_array_equal(client.scene()["cube"], first)
        client.recover()
        client.joint_reset(duration=1.0)
        assert np.linalg.norm(client.state().dq) < 0.1


def test_client_errors_are_clear(served):
    backend, server = served
    with HttpRobotClient(server.url, token="t0k") as client:
        before = backend.state().target_pose.copy()
        with pytest.raises(ValueError, match="pose: values must be finite"):
            client.set_target([0.4, 0.0, np.nan, *DOWN])
        with pytest.raises(ValueError, match="quaternion"):
            client.set_target([0.4, 0.0, 0.3, 3.0, 0.0, 0.0, 0.0])
        with pytest.raises(ValueError, match="less than or equal to 0.08"):
            client.set_gripper(0.5)
        np.testing.assert_array_equal(backend.state().target_pose, before)
    with pytest.raises(PermissionError, match="invalid bearer token"):
        HttpRobotClient(server.url, token="wrong")
    with pytest.raises(PermissionError, match="missing bearer token"):
        HttpRobotClient(server.url)
    with pytest.raises(RobotConnectionError, match="unreachable"):
        HttpRobotClient("http://127.0.0.1:9", timeout=0.5)


def _env_on(url: str, task, seed: int) -> FrankaEnv:
    env = FrankaEnv(HttpRobotClient(url), task, reward_fn=make_reward(task))
    env.action_space.seed(seed)
    return env


def test_server_restart_mid_episode_raises_then_next_reset_reconnects():
    template = make_sim_env("PandaPickCube", seed=0, max_episode_steps=20)
    task = template.task
    backend = template.client.backend
    server = ServerThread(create_app(backend, {}, ServerConfig(safety_box=task.safety_box))).start()
    port = server.port
    env = _env_on(server.url, task, 0)
    env.reset(seed=0)
    env.step(np.zeros(7, dtype=np.float32))
    server.stop()  # the server goes away mid-episode
    with pytest.raises(RobotClientError, match="unreachable"):
        env.step(np.zeros(7, dtype=np.float32))
    with pytest.raises(RobotClientError, match="call reset"):
        env.step(np.zeros(7, dtype=np.float32))
    fresh = make_sim_env("PandaPickCube", seed=1).client.backend
    server = ServerThread(create_app(fresh, {}, ServerConfig(safety_box=task.safety_box)), port=port).start()
    try:
        obs, _ = env.reset(seed=1)  # reconnects to the restarted server
        obs, *_ = env.step(np.zeros(7, dtype=np.float32))
        assert obs["state"]["tcp_pose"].shape == (7,)
        # A restart the client never saw (between two calls) is detected by the session id:
        server.stop()
        other = make_sim_env("PandaPickCube", seed=2).client.backend
        server = ServerThread(create_app(other, {}, ServerConfig(safety_box=task.safety_box)), port=port).start()
        before = other.state().target_pose.copy()
        with pytest.raises(RobotClientError, match="restarted"):
            env.step(np.zeros(7, dtype=np.float32))
        np.testing.assert_array_equal(other.state().target_pose, before)  # the stale command never reached it
        env.reset(seed=2)
        env.step(np.zeros(7, dtype=np.float32))
        other.close()
    finally:
        env.close()
        server.stop()
        fresh.close()
        backend.close()


@pytest.mark.parametrize("pixels", [False, True], ids=["state", "pixels"])
def test_episodes_through_http_match_local_episodes(pixels):
    """Same seed, same actions: HttpRobotClient → server → twin(lockstep) ≡ LocalRobot → twin."""
    steps = 30 if pixels else 60
    local = make_sim_env("PandaPickCube", pixels=pixels, seed=3, max_episode_steps=steps)
    remote_template = make_sim_env("PandaPickCube", pixels=pixels, seed=3, max_episode_steps=steps)
    backend = remote_template.client.backend
    task = remote_template.task
    server = ServerThread(create_app(backend, backend.cameras(), ServerConfig(safety_box=task.safety_box))).start()
    remote = _env_on(server.url, task, 3)
    rng = np.random.default_rng(3)
    try:
        for episode in range(2):
            obs_local, _ = local.reset(seed=10 + episode)
            obs_remote, _ = remote.reset(seed=10 + episode)
            _assert_same(obs_local, obs_remote)
            done = False
            while not done:
                action = rng.uniform(-1, 1, size=7).astype(np.float32)
                obs_local, r_local, term_local, trunc_local, _ = local.step(action)
                obs_remote, r_remote, term_remote, trunc_remote, _ = remote.step(action)
                _assert_same(obs_local, obs_remote)
                assert (r_local, term_local, trunc_local) == (r_remote, term_remote, trunc_remote)
                done = term_local or trunc_local
        assert local.client.backend.state().timestamp == backend.state().timestamp
    finally:
        remote.close()
        server.stop()
        backend.close()
        local.close()


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _assert_same(a[key], b[key])
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_safety_stop_reaches_the_client_as_an_error():
    backend = _twin(scene="empty", cameras=())
    box = SafetyBox(position_low=(0.2, -0.3, 0.3), position_high=(0.6, 0.3, 0.6), center_quat=tuple(DOWN))
    server = ServerThread(create_app(backend, {}, ServerConfig(safety_box=box))).start()
    try:
        with HttpRobotClient(server.url) as client:
            client.advance(0.1)  # arms the measured-pose check (home is inside)
            backend.set_target([0.307, 0.0, 0.2, *DOWN])  # dragged out by something outside the server
            client.advance(2.0)
            assert any("safety_stop" in error for error in client.state().errors)
            with pytest.raises(Exception, match="safety stop active"):
                client.set_target([0.4, 0.0, 0.4, *DOWN])
            client.recover()
            client.set_target([0.4, 0.0, 0.4, *DOWN])
    finally:
        server.stop()
        backend.close()


def test_idle_keep_alive_connection_closed_by_the_server_is_reopened_transparently():
    backend = _twin(scene="empty", cameras=())
    server = ServerThread(create_app(backend, {}, ServerConfig()), timeout_keep_alive=0.3).start()
    try:
        with HttpRobotClient(server.url) as client:
            first = client.state()
            time.sleep(0.8)  # a pause between episodes: the server drops the idle connection
            assert client.state().timestamp == first.timestamp  # no RobotConnectionError, same session
    finally:
        server.stop()
        backend.close()
