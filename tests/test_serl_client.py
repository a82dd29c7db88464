"""Our env on a SERL-API server (``--env.robot-api serl|hil-serl``), here our own ``--serl-api`` twin server."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest

pytest.importorskip("robot_servers.backends.twin")  # sets MUJOCO_GL before mujoco loads

from backend_episode import wait_for as _wait_until  # noqa: E402
from robot_servers.backends.base import ImpedanceParams  # noqa: E402
from robot_servers.backends.serl_http import SerlHttpBackend, serl_compliance  # noqa: E402
from robot_servers.backends.twin import TwinBackend, TwinConfig  # noqa: E402
from robot_servers.control.pose import quat_multiply, quat_to_matrix  # noqa: E402
from robot_servers.control.safety import SafetyBox  # noqa: E402
from robot_servers.guard import CommandRejected  # noqa: E402
from robot_servers.http import ServerConfig, create_app  # noqa: E402
from robot_servers.http.serl_api import SerlApiConfig, serl_api  # noqa: E402
from robot_servers.serve import ServerThread  # noqa: E402
from serl.envs.http_client import HttpRobotClient, RobotServerError  # noqa: E402
from serl.envs.task_config import ResetHookSpec, TaskConfig  # noqa: E402
from serl.envs.tasks import register_task  # noqa: E402
from serl.runtime.env_config import EnvConfig  # noqa: E402
from serl.runtime.envs import ObservationWrappers, build_env  # noqa: E402

DOWN = (1.0, 0.0, 0.0, 0.0)
RESET = (0.45, 0.0, 0.30, *DOWN)
TASK = TaskConfig(
    name="SerlApiReach",
    reset_pose=RESET,
    safety_box=SafetyBox(position_low=(0.3, -0.15, 0.15), position_high=(0.52, 0.15, 0.45),
                         euler_low=(-0.2, -0.2, -0.5), euler_high=(0.2, 0.2, 0.5), center_quat=DOWN),
    reward="keyboard",
    max_episode_steps=20,
    precision=ImpedanceParams(translational_clip=(0.02, 0.02, 0.02), rotational_clip=(0.1, 0.1, 0.1)),
    reset_hooks=(ResetHookSpec("go_to_reset_pose", (("gripper", 0.08), ("duration", 1.5), ("settle", 0.8),
                                                    ("randomize", False))),),
)
register_task(TASK, overwrite=True)


@pytest.fixture(params=["serl", "hil-serl"])
def serl_server(request):
    """Our twin with only the SERL API in use, no box and no watchdog on the server side (as a SERL server)."""
    backend = TwinBackend(TwinConfig(scene="empty", lockstep=False, cameras=()))
    app = create_app(backend, {}, ServerConfig(safety_box=None, watchdog_timeout=None),
                     [serl_api(SerlApiConfig(flavor=request.param))])
    with ServerThread(app) as server:
        yield backend, server.url + "/serl/", request.param
    backend.close()




def test_env_resets_within_1cm_and_steps_with_the_task_box_held_on_this_side(serl_server, caplog):
    backend, url, flavor = serl_server
    caplog.set_level(logging.WARNING)
    env = build_env(EnvConfig(task=TASK.name, robot_url=url, robot_api=flavor),
                    observations=ObservationWrappers(relative_frame=False, euler=False, flat=False))
    try:
        assert "no server-side safety box" in caplog.text and "no fault reporting" in caplog.text
        obs, _ = env.reset()
        pose = obs["state"]["tcp_pose"]
        assert np.linalg.norm(pose[:3] - np.array(RESET[:3])) < 0.01
        assert np.linalg.norm(backend.state().tcp_pose[:3] - np.array(RESET[:3])) < 0.01
        assert pose[6] >= 0  # re-signed to our convention
        start = pose[:3].copy()
        action = np.zeros(env.action_space.shape, np.float32)
        action[0], action[6] = 1.0, -1.0  # +x at 2 cm a step, gripper closed: the box ends x at 0.52
        for _ in range(20):
            obs, *_ = env.step(action)
        assert np.linalg.norm(obs["state"]["tcp_pose"][:3] - start) > 0.05
        assert backend.state().target_pose[0] <= 0.52 + 1e-6  # every target was clipped on this side
        assert _wait_until(lambda: backend.state().gripper_width < 0.01, 5.0)
        assert backend.state().tcp_pose[0] < 0.52 + 0.01
    finally:
        env.close()


def test_adapter_converts_sign_wrench_gripper_and_gains(serl_server):
    backend, url, flavor = serl_server
    adapter = SerlHttpBackend(url, flavor=flavor)
    try:
        tilted = quat_multiply(np.array([np.sin(0.05), 0.0, 0.0, np.cos(0.05)]), np.array(DOWN))  # x > 0, w < 0
        goal = np.array([0.42, 0.0, 0.35, *tilted])
        assert tilted[3] < 0

        adapter.set_target(goal)
        assert _wait_until(lambda: np.linalg.norm(backend.state().tcp_pose[:3] - goal[:3]) < 3e-3, 10.0)
        press = goal.copy()
        press[2] = -0.02  # into the floor: a wrench to convert

        adapter.set_target(press)

        def pressing_steadily():
            before = backend.state().wrench
            time.sleep(0.2)
            return before[2] > 5.0 and np.allclose(backend.state().wrench, before, atol=0.02)
        assert _wait_until(pressing_steadily, 10.0)
        state, truth = adapter.state(), backend.state()
        assert state.tcp_pose[6] >= 0
        np.testing.assert_allclose(state.tcp_pose, truth.tcp_pose, atol=2e-3)
        np.testing.assert_allclose(state.wrench, truth.wrench, atol=0.5)  # back in the base frame
        served_force = np.array(json.loads(adapter._post("getforce"))["force"])  # SERL's: end-effector frame
        np.testing.assert_allclose(served_force, quat_to_matrix(truth.tcp_pose[3:]).T @ truth.wrench[:3], atol=0.5)
        assert abs(served_force[1]) > 1.0  # the tilt shows: the frames differ
        np.testing.assert_allclose(state.q, truth.q, atol=1e-2)  # the nullspace drifts a little under load
        assert state.gripper_width == pytest.approx(truth.gripper_width, abs=1e-3)
        adapter.set_impedance(ImpedanceParams(translational_stiffness=(1500.0,) * 3))
        np.testing.assert_allclose(backend.controller.params.translational_stiffness, [1500.0] * 3)
        with pytest.raises(ValueError, match="one value for all three axes"):
            adapter.set_impedance(ImpedanceParams(translational_stiffness=(1500.0, 1000.0, 1500.0)))
        with pytest.raises(ValueError, match="q=None"):
            adapter.joint_reset(np.zeros(7))
        adapter.set_gripper(0.0)
        assert _wait_until(lambda: backend.state().gripper_width < 0.005, 5.0)
        assert adapter.state().gripper_width < 0.005
        adapter.set_gripper(0.08)
        assert _wait_until(lambda: adapter.state().gripper_width > 0.075, 5.0)
        adapter.joint_reset()
        np.testing.assert_allclose(backend.state().q, backend.home_q, atol=2e-3)
        with pytest.raises(ValueError, match="arr"):  # the server's own refusal comes back as bad input
            adapter._post("pose", {"arr": [0.4, 0.0, 0.4, 0.0, 0.0, 0.0, 0.0]})
    finally:
        adapter.close()


def test_serl_compliance_body_is_flat_with_both_clip_sides_and_the_integral_gains():
    body = serl_compliance(ImpedanceParams(translational_clip=(0.01, 0.02, 0.03)))
    assert body["translational_clip_y"] == body["translational_clip_neg_y"] == 0.02
    assert body["translational_damping"] == pytest.approx(2 * np.sqrt(2000.0))
    assert body["translational_Ki"] == 0.0 and body["rotational_Ki"] == 0.0
    body = serl_compliance(ImpedanceParams(rotational_clip_neg=(0.05, 0.01, 0.05), translational_ki=(0.1,) * 3))
    assert body["rotational_clip_y"] == 0.05 and body["rotational_clip_neg_y"] == 0.01
    assert body["translational_Ki"] == 0.1 and body["rotational_Ki"] == 0.0
    with pytest.raises(ValueError, match="rotational_ki"):  # SERL takes one value for the three axes
        serl_compliance(ImpedanceParams(rotational_ki=(0.1, 0.0, 0.0)))


def test_guard_refuses_before_the_serl_server_sees_it(serl_server):
    from serl.envs.serl_client import serl_robot

    backend, url, flavor = serl_server
    robot = serl_robot(url, flavor, TASK)
    try:
        held = backend.state().target_pose.copy()
        with pytest.raises(CommandRejected):
            robot.set_target([0.4, 0.0, np.nan, *DOWN])
        np.testing.assert_array_equal(backend.state().target_pose, held)
    finally:
        robot.close()


def test_native_client_on_a_serl_server_names_the_flag(serl_server):
    _backend, url, _flavor = serl_server
    with pytest.raises(RobotServerError, match="--env.robot-api serl"):
        HttpRobotClient(url)


def test_robot_api_needs_a_url_and_a_known_name():
    with pytest.raises(ValueError, match="robot_url"):
        EnvConfig(robot_api="serl")
    with pytest.raises(ValueError, match="robot_api"):
        EnvConfig(robot_url="http://127.0.0.1:5000/", robot_api="ros1")


def test_our_server_in_front_of_a_serl_server(serl_server):
    from robot_servers.serve import ServeConfig, build_server

    backend, url, flavor = serl_server
    app, proxy, _cameras = build_server(ServeConfig(backend="serl-http", option=(f"url={url}", f"flavor={flavor}")))
    try:
        with ServerThread(app) as server:
            client = HttpRobotClient(server.url)
            assert client.health()["backend"] == "serl-http"
            np.testing.assert_allclose(client.state().tcp_pose[:3], backend.state().tcp_pose[:3], atol=2e-3)

            def there():  # at 10 Hz: the proxy's watchdog holds the arm after 0.5 s of silence
                client.set_target([0.4, 0.02, 0.4, *DOWN])
                time.sleep(0.1)
                return np.linalg.norm(backend.state().tcp_pose[:3] - [0.4, 0.02, 0.4]) < 3e-3
            assert _wait_until(there, 10.0)
            client.close()
    finally:
        proxy.close()
