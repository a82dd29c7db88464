"""Ros2Backend end to end: backend → DDS on loopback → twin node (a subprocess serving crisp's topics)."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import signal
import sys
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")
if importlib.util.find_spec("mujoco") is None:  # the twin node needs it; not imported here (MUJOCO_GL)
    pytest.skip("mujoco is not installed", allow_module_level=True)

import backend_episode  # noqa: E402

from robot_servers.backends.base import ImpedanceParams  # noqa: E402
from robot_servers.backends.ros2 import HOME_Q, Ros2Backend, Ros2Config  # noqa: E402
from robot_servers.ros2 import crisp, network  # noqa: E402
from robot_servers.ros2.twin_node import running_twin_node  # noqa: E402

pytestmark = [pytest.mark.ros2, pytest.mark.timeout(120)]

DOMAIN = 1 + os.getpid() % 50  # unique per test process (0..101 is the safe range on Linux)
STALE_AFTER = 5.0  # s; on a loaded 2-core machine a twin node can fall seconds behind

wait_for = functools.partial(backend_episode.wait_for, period=0.02)  # state arrives at 200 Hz: poll often


@contextlib.contextmanager
def second_node(name: str):
    """Another rclpy node in the test's domain (a competing or misbehaving publisher)."""
    import rclpy

    context = network.init_context(DOMAIN)
    node = rclpy.create_node(name, context=context)
    try:
        yield node
    finally:
        node.destroy_node()
        context.try_shutdown()


@pytest.fixture(scope="module")
def twin_node():
    with running_twin_node(DOMAIN) as process:
        yield process


@pytest.fixture(scope="module")
def backend(twin_node):
    # the stale tests freeze the driver and set their own limit
    with Ros2Backend(Ros2Config(domain_id=DOMAIN, stale_after=STALE_AFTER)) as b:
        yield b


@pytest.fixture
def healthy(backend):
    yield backend
    if backend.state().errors:
        backend.recover()


ROS2_GAINS = ImpedanceParams(rotational_stiffness=(60.0, 60.0, 60.0))  # within crisp's rotational bound (100)


def test_crisp_parameter_mapping_sends_explicit_damping_and_nullspace_weights():
    params = ImpedanceParams(translational_stiffness=(1000, 1500, 2000), rotational_stiffness=(50, 60, 70),
                             translational_clip=(0.01, 0.02, 0.03), rotational_clip=(0.1, 0.2, 0.3),
                             nullspace_stiffness=0.5, joint1_nullspace_stiffness=50.0)
    values = crisp.impedance_to_parameters(params)
    assert values["task.k_pos_y"] == 1500 and values["task.k_rot_z"] == 70
    assert values["task.error_clip.z"] == 0.03 and values["task.error_clip.rx"] == 0.1
    assert values["task.d_pos_x"] == pytest.approx(2 * np.sqrt(1000))  # explicit: crisp never derives it from a clamped k
    assert values["nullspace.stiffness"] == 50.0 and values["nullspace.damping"] > 0
    assert values["nullspace.weights.fr3_joint1.value"] == 1.0 and values["nullspace.weights.fr3_joint7.value"] == 0.01
    applied = crisp.parameters_to_impedance({**crisp.defaults(), **values, crisp.CAP_TRANSLATIONAL: 5000.0,
                                             crisp.CAP_ROTATIONAL: 100.0})
    assert np.allclose(applied.translational_stiffness, params.translational_stiffness)
    assert np.allclose(applied.rotational_clip, params.rotational_clip)
    assert applied.joint1_nullspace_stiffness == pytest.approx(50.0) and applied.nullspace_stiffness == pytest.approx(0.5)
    capped = crisp.parameters_to_impedance({**crisp.defaults(), "task.k_pos_x": 2000.0})  # crisp's 900 N/m cap
    assert capped.translational_stiffness[0] == 900.0
    assert capped.translational_damping[0] == pytest.approx(2 * np.sqrt(2000))  # crisp: from the unclamped k
    with pytest.raises(ValueError, match="5000"):
        crisp.impedance_to_parameters(ImpedanceParams(translational_stiffness=(5500, 0, 0)))
    assert crisp.check_value("variable_max_stiffness.rotational", 150.0)
    assert crisp.check_value("nullspace.projector_type", "other") and not crisp.check_value("task.k_pos_x", 900.0)


def test_config_validation_and_missing_rclpy_message(monkeypatch):
    with pytest.raises(ValueError, match="domain_id"):
        Ros2Config(domain_id=500)
    with pytest.raises(ValueError, match="stale_after"):
        Ros2Config(stale_after=0)
    with pytest.raises(ValueError, match="target_pose_topic"):
        Ros2Config(target_pose_topic="")
    with pytest.raises(ValueError, match="12"):
        Ros2Config(joint_reset_max_torque=40.0)  # joints 5-7 are rated 12 Nm; crisp's max_tau is one for all
    monkeypatch.setitem(sys.modules, "rclpy", None)
    with pytest.raises(ImportError, match=r"serl-suite\[ros2\]"):
        Ros2Backend(Ros2Config(domain_id=DOMAIN))


def test_state_arrives_over_dds(backend):
    state = backend.state()
    assert state.errors == [] and state.controller_mode == "impedance"
    assert state.tcp_pose[:3] == pytest.approx([0.307, 0.0, 0.487], abs=0.02)  # the twin's home TCP
    assert np.abs(state.q - HOME_Q).max() < 0.05
    assert 0.0 <= state.gripper_width <= 0.08
    assert backend.state_age() < 0.1


def test_target_pose_moves_the_twin(healthy):
    backend = healthy
    start = backend.state().tcp_pose
    target = start.copy()
    target[:3] += [0.05, -0.03, 0.02]
    backend.set_target(target)
    direction = (target[:3] - start[:3]) / np.linalg.norm(target[:3] - start[:3])
    # crisp's twist (end-effector frame) comes back in the base frame: it points along the motion
    assert wait_for(lambda: backend.state().tcp_vel[:3] @ direction > 0.02, 20.0)
    assert backend.state().velocity_source == "twist"
    assert wait_for(lambda: np.linalg.norm(backend.state().tcp_pose[:3] - target[:3]) < 0.005, 20.0)
    backend.set_target(start)
    assert wait_for(lambda: np.linalg.norm(backend.state().tcp_pose[:3] - start[:3]) < 0.005, 20.0)


def test_impedance_goes_through_crisp_parameters(healthy):
    backend = healthy
    backend.set_impedance(ImpedanceParams(translational_stiffness=(600, 700, 800), rotational_stiffness=(40, 40, 40),
                                          translational_clip=(0.02, 0.02, 0.02)))
    values = backend._get_parameters(["task.k_pos_x", "task.k_pos_z", "task.error_clip.y", "task.d_pos_z"])
    assert values == {"task.k_pos_x": 600.0, "task.k_pos_z": 800.0, "task.error_clip.y": 0.02,
                      "task.d_pos_z": pytest.approx(2 * np.sqrt(800))}
    with pytest.raises(ValueError, match="5000"):
        backend.set_impedance(ImpedanceParams(translational_stiffness=(5500, 100, 100)))
    with pytest.raises(ValueError, match="rejected"):
        backend._set_parameters({"task.k_pos_x": 6000.0})  # the node enforces crisp's bounds itself
    assert backend._get_parameters(["task.k_pos_x"]) == {"task.k_pos_x": 600.0}, "a rejected change changes nothing"
    backend.set_impedance(ROS2_GAINS)


def test_stiffness_above_the_controllers_cap_raises_it_or_fails_naming_both(healthy, monkeypatch):
    import dataclasses

    backend = healthy
    caps = [crisp.CAP_TRANSLATIONAL, crisp.CAP_ROTATIONAL]
    backend._set_parameters({crisp.CAP_TRANSLATIONAL: 900.0, crisp.CAP_ROTATIONAL: 60.0})  # crisp's defaults
    stiff = ImpedanceParams(translational_stiffness=(2000.0, 2000.0, 2000.0), rotational_stiffness=(80.0, 80.0, 80.0))
    monkeypatch.setattr(backend, "config", dataclasses.replace(backend.config, raise_stiffness_cap=False))
    with pytest.raises(ValueError, match=r"2000 N/m.*900 N/m"):
        backend.set_impedance(stiff)
    assert backend._get_parameters(caps) == {crisp.CAP_TRANSLATIONAL: 900.0, crisp.CAP_ROTATIONAL: 60.0}
    monkeypatch.undo()
    backend.set_impedance(stiff)  # raises the caps first, within crisp's bounds
    assert backend._get_parameters(caps) == {crisp.CAP_TRANSLATIONAL: 2000.0, crisp.CAP_ROTATIONAL: 80.0}
    applied = backend.impedance()  # what the controller applies, read back from it
    assert np.allclose(applied.translational_stiffness, 2000.0) and np.allclose(applied.rotational_stiffness, 80.0)
    assert np.allclose(applied.translational_damping, 2 * np.sqrt(2000.0))  # damping from the applied stiffness
    with pytest.raises(ValueError, match=r"rotational_stiffness 150 Nm/rad.*= 80 Nm/rad.*bound is 100"):
        backend.set_impedance(ImpedanceParams(rotational_stiffness=(150.0, 150.0, 150.0)))
    with pytest.raises(ValueError, match="variable_max_stiffness.rotational"):
        backend._set_parameters({crisp.CAP_ROTATIONAL: 150.0})  # the twin node holds crisp's bound too
    backend.set_impedance(ROS2_GAINS)


def test_bad_commands_raise_and_change_nothing(healthy):
    backend = healthy
    before = backend.state().target_pose
    with pytest.raises(ValueError, match="pose"):
        backend.set_target([0.3, 0.0, 0.4, 1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="finite"):
        backend.set_target([0.3, 0.0, np.inf, 1.0, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="width"):
        backend.set_gripper(-0.01)
    with pytest.raises(ValueError, match="q"):
        backend.joint_reset([0.0] * 6)
    assert np.allclose(backend.state().target_pose, before)


def test_franka_hand_adapter_gripper_and_joint_reset_parameters(healthy, monkeypatch):
    backend = healthy
    backend.set_gripper(0.02)  # the Franka hand grasps: below 0.04 m it closes fully
    assert wait_for(lambda: backend.state().gripper_width < 0.003, 20.0)
    backend.set_gripper(0.06)
    assert wait_for(lambda: backend.state().gripper_width > 0.077, 20.0)
    sent: list[dict] = []
    real_set = backend._parameters.set
    monkeypatch.setattr(backend._parameters, "set", lambda values: (sent.append(dict(values)), real_set(values))[1])
    away = backend.state().tcp_pose.copy()
    away[:3] += [0.04, 0.04, -0.04]
    backend.set_target(away)
    assert wait_for(lambda: np.abs(backend.state().q - HOME_Q).max() > 0.05, 20.0)
    backend.joint_reset(duration=1.5)
    state = backend.state()
    assert np.abs(state.q - HOME_Q).max() < 0.03
    assert state.controller_mode == "impedance" and state.errors == []
    reset, restore = sent[0], sent[-1]
    assert reset["nullspace.projector_type"] == "none" and reset["task.k_pos_x"] == 0.0
    assert list(reset)[0] == "nullspace.damping", "damping is positive before anything else changes"
    assert all(v["nullspace.damping"] > 0 for v in sent if "nullspace.damping" in v)
    weights = np.array([reset[crisp.weight_name(j)] for j in crisp.FR3_JOINTS])
    per_joint_torque = reset["nullspace.max_tau"] * np.ones(7)  # crisp: one bound for every joint
    assert np.all(per_joint_torque <= crisp.FRANKA_TORQUE_RATINGS) and np.all(weights > 0)
    assert restore["nullspace.projector_type"] == "kinematic" and restore["nullspace.damping"] > 0
    assert backend._get_parameters(["nullspace.projector_type"]) == {"nullspace.projector_type": "kinematic"}
    assert backend._get_parameters(["nullspace.damping"])["nullspace.damping"] > 0


def test_malformed_message_flags_error_and_holds(healthy):
    from geometry_msgs.msg import PoseStamped

    backend = healthy
    with second_node("bad_publisher") as node:
        publisher = node.create_publisher(PoseStamped, "current_pose", 10)
        bad = PoseStamped()
        bad.pose.position.x = float("nan")
        bad.pose.orientation.w = 1.0
        assert wait_for(lambda: (publisher.publish(bad), bool(backend.state().errors))[1], 5.0, period=0.05)
        state = backend.state()
        assert any("malformed" in e and "current_pose" in e for e in state.errors)
        assert state.controller_mode == "hold" and np.all(np.isfinite(state.tcp_pose))
        with pytest.raises(RuntimeError, match="recover"):
            backend.set_target(state.tcp_pose)
    time.sleep(0.3)  # let in-flight bad messages drain before recovering
    backend.recover()
    assert backend.state().errors == []
    backend.set_target(backend.state().tcp_pose)


def test_stale_state_flags_error_holds_and_recovers():
    from robot_servers.backends import make_backend

    domain = DOMAIN + 50
    with running_twin_node(domain) as process, \
            make_backend("ros2", domain_id=domain, stale_after=0.25) as backend:  # the server's way in
        os.kill(process.pid, signal.SIGSTOP)  # the arm's driver freezes: no more state messages
        try:
            assert wait_for(lambda: any("stale" in e for e in backend.state().errors), 20.0)
            assert backend.state().controller_mode == "hold"
            with pytest.raises(RuntimeError, match="recover"):
                backend.set_target(backend.state().tcp_pose)
        finally:
            os.kill(process.pid, signal.SIGCONT)

        def recovered() -> bool:  # on a loaded machine a late message right after recover() latches again
            try:
                backend.recover()
            except RuntimeError:
                return False
            state = backend.state()
            return state.errors == [] and state.controller_mode == "impedance"

        assert wait_for(recovered, 30.0), backend.state().errors


def test_episode_through_the_robot_server(backend, tmp_path):
    cameras = backend_episode.video_cameras(tmp_path)
    try:
        figures = backend_episode.run_episode(backend, cameras, HOME_Q)
    finally:
        for camera in cameras.values():
            camera.close()
    assert figures["tracking_error_mm_median"] < 20.0


def test_server_reports_a_frozen_driver_in_health_and_recovers():
    from robot_servers.http import ServerConfig, create_app
    from robot_servers.serve import ServerThread
    from robot_servers.guard import RobotFault
    from serl.envs.http_client import HttpRobotClient

    domain = DOMAIN + 51
    with running_twin_node(domain) as process, \
            Ros2Backend(Ros2Config(domain_id=domain, stale_after=0.5)) as backend, \
            ServerThread(create_app(backend, {}, ServerConfig(watchdog_timeout=None))) as server, \
            HttpRobotClient(server.url, timeout=5.0) as client:
        assert client.health()["ok"]
        os.kill(process.pid, signal.SIGSTOP)
        try:
            assert wait_for(lambda: not client.health()["ok"], 20.0)
            health = client.health()
            assert any("stale" in e for e in health["errors"])
            assert client.state().controller_mode == "hold"
            with pytest.raises(RobotFault):
                client.set_target(client.state().tcp_pose)  # refused, and the server stays up
        finally:
            os.kill(process.pid, signal.SIGCONT)
        # staleness latches until recover(); on a loaded machine a late message right after it latches again
        assert wait_for(lambda: (client.recover(), client.health()["ok"])[1], 30.0), client.health()
        target = client.state().tcp_pose.copy()
        target[2] += 0.02
        client.set_target(target)
        assert wait_for(lambda: abs(client.state().tcp_pose[2] - target[2]) < 0.004, 20.0)


def test_twin_node_ignores_targets_from_competing_publishers(healthy):
    """crisp_controllers' rule, reproduced by the twin node: two publishers on target_pose → no target is
    taken; the backend sees the second publisher too and refuses to command until it goes."""
    from geometry_msgs.msg import PoseStamped

    from robot_servers.ros2.messages import pose_msg

    backend = healthy
    start = backend.state().tcp_pose
    moved = start.copy()
    moved[0] += 0.04
    with second_node("second_commander") as node:
        publisher = node.create_publisher(PoseStamped, "target_pose", 10)
        assert wait_for(lambda: any("publishers on target_pose" in e for e in backend.state().errors), 20.0)
        with pytest.raises(RuntimeError, match="recover"):
            backend.set_target(moved)
        assert wait_for(lambda: (publisher.publish(pose_msg(moved, "base", 0.0)), False)[1], 1.0) is False  # 1 s of targets
        assert np.linalg.norm(backend.state().tcp_pose[:3] - start[:3]) < 0.005
    assert wait_for(lambda: not backend.competing_publishers(), 20.0)
    backend.recover()
    # resend until the twin node, too, has seen the second publisher go
    assert wait_for(lambda: (backend.set_target(moved),
                             np.linalg.norm(backend.state().tcp_pose[:3] - moved[:3]) < 0.005)[1], 8.0)
    backend.set_target(start)


def test_served_ros2_backend_opens_the_task_cameras_with_their_crops_and_sizes(twin_node, tmp_path):
    import dataclasses

    from test_cameras import write_video

    from robot_servers.serve import ServeConfig, build_server
    from serl.cli.serve import served_task
    from serl.envs.task_config import CameraSpec
    from serl.envs.tasks import get_task, register_task

    video = write_video(tmp_path / "front.avi", frames=10)
    task = dataclasses.replace(get_task("PandaPickCube"), name="Ros2CameraTask", cameras=(
        CameraSpec("front", size=(24, 40), crop=(0, 0, 240, 160), serial=f"opencv:{video},loop"),))
    register_task(task, overwrite=True)
    _app, backend, cameras = build_server(ServeConfig(
        backend="ros2", option=(f"domain_id={DOMAIN}", f"stale_after={STALE_AFTER}")), served_task(task.name))
    try:
        assert set(cameras) == {"front"}
        frame, _ = cameras["front"].read()
        assert frame.shape == (24, 40, 3)  # the task's size, not the spec's default 128x128
        assert frame[..., 0].mean() > 200 and frame[..., 2].mean() < 30  # the task's crop: the red left half
    finally:
        for camera in cameras.values():
            camera.close()
        backend.close()
    missing = dataclasses.replace(task, name="Ros2MissingCamera", cameras=(CameraSpec("wrist"),))
    register_task(missing, overwrite=True)
    with pytest.raises(ValueError, match="needs camera"):
        build_server(ServeConfig(backend="ros2", option=(f"domain_id={DOMAIN}", f"stale_after={STALE_AFTER}")),
                     served_task(missing.name))


def test_nullspace_target_reaches_the_twin_posture_through_the_public_api(healthy):
    healthy.set_impedance(ROS2_GAINS)  # joint 1 at 100 Nm/rad through crisp's nullspace weights
    # Earlier tests leave the arm returning to its start pose: measure the TCP only once it rests.
    assert wait_for(lambda: np.linalg.norm(healthy.state().tcp_vel[:3]) < 0.002, 20.0)
    before = healthy.state()
    posture = before.q.copy()
    posture[0] += 0.3
    try:
        healthy.set_nullspace_target(posture)  # target_joint → twin node → TwinBackend.set_nullspace_target
        assert wait_for(lambda: healthy.state().q[0] - before.q[0] > 0.15, 20.0)  # joint 1 swings ...
        assert np.linalg.norm(healthy.state().tcp_pose[:3] - before.tcp_pose[:3]) < 0.01  # ... the TCP holds
    finally:
        healthy.set_nullspace_target(before.q)
        wait_for(lambda: abs(healthy.state().q[0] - before.q[0]) < 0.02, 20.0)


def test_launch_defaults_are_the_python_defaults():
    """robot_server.launch.py's default command line builds exactly ``Ros2Config()``."""
    import dataclasses

    from test_examples_launch import load_server_command

    from robot_servers.overrides import parse_overrides

    ns = load_server_command()
    values = {name: default for name, (default, _) in ns["ARGUMENTS"].items()}
    command = ns["server_command"](values)
    options = parse_overrides(tuple(command[command.index("--option") + 1:]), "--option")
    options = {k: v for k, v in options.items() if k != "cameras"}
    defaults = Ros2Config()
    for name, value in options.items():
        assert getattr(defaults, name) == value, name
    assert {f.name for f in dataclasses.fields(Ros2Config)} >= set(options)


def test_preflight_reports_controller_rates_qos_limits_and_gripper(healthy):
    report = healthy.preflight(window=0.5)
    topics = report["topics"]
    assert report["controller_state"].startswith("unknown")  # no controller_manager in the rehearsal
    assert topics["target_pose"]["qos_match"] and topics["target_pose"]["subscribers"]
    assert topics["wrench"]["publishers"] and topics["wrench"]["publishers"][0][1] == "best_effort"  # franka_ros2's QoS
    assert all(rate > 0 for rate in report["rates_hz"].values()), report["rates_hz"]
    assert report["limits"][crisp.CAP_ROTATIONAL] <= crisp.MAX_STIFFNESS_BOUNDS["rotational"]
    assert report["gripper"]["binary"] and report["velocity_source"] == "twist"
    # a starved twin node on the shared 2-core CI box may publish slowly; nothing else may be wrong
    load = ("stale state", "current_pose at", "joint_states at")
    assert [p for p in report["problems"] if not p.startswith(load)] == [], report["problems"]


def test_check_flag_prints_the_report_and_exits_zero():
    import json
    import subprocess

    domain = DOMAIN + 52
    with running_twin_node(domain):
        result = subprocess.run([sys.executable, "-m", "robot_servers", "--backend", "ros2", "--check",
                                 "--option", f"domain_id={domain}", f"stale_after={STALE_AFTER}"],
                                capture_output=True, text=True, timeout=60)
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert result.returncode == (1 if report["problems"] else 0), result.stderr
    load = ("stale state", "current_pose at", "joint_states at")  # a starved twin node on a loaded machine
    assert [p for p in report["problems"] if not p.startswith(load)] == [], report["problems"]
    assert report["gripper"]["binary"] is True and report["topics"]["target_pose"]["subscribers"]
    assert report["dds"]["network"] == "localhost"
    assert report["dds"]["loopback_only"] is not bool(network.user_settings())  # the user's DDS variables decide
