"""An independent client drives the twin node: crisp_py (PyPI ``crisp-python``, crisp_controllers' own
Python client) with its own ``Robot`` and ``Gripper`` classes and its stock FR3 configs."""

from __future__ import annotations

import functools
import importlib.util
import os
import pathlib
import sys

import numpy as np
import pytest

pytest.importorskip("rclpy")
if importlib.util.find_spec("mujoco") is None:
    pytest.skip("mujoco is not installed", allow_module_level=True)
if importlib.util.find_spec("crisp_py") is None:
    pytest.skip("crisp-python is not installed", allow_module_level=True)
STUBS = str(pathlib.Path(__file__).parent / "crisp_stubs")  # control_msgs, controller_manager_msgs, tf2_ros
STUB_PACKAGES = ("control_msgs", "controller_manager_msgs", "tf2_ros")

import backend_episode  # noqa: E402
import yaml  # noqa: E402

from robot_servers.ros2.network import confine  # noqa: E402
from robot_servers.ros2.twin_node import running_twin_node  # noqa: E402

pytestmark = [pytest.mark.ros2, pytest.mark.timeout(120)]

DOMAIN = 163 + os.getpid() % 60
wait_for = functools.partial(backend_episode.wait_for, period=0.02)


@pytest.fixture(scope="module")
def crisp_robot():
    import rclpy

    sys.path.insert(0, STUBS)  # only while crisp_py runs: other tests must not see the stand-ins
    try:
        from crisp_py.robot import Robot

        with running_twin_node(DOMAIN):
            yield from _robot(rclpy, Robot)
    finally:
        sys.path.remove(STUBS)
        for name in [m for m in sys.modules if m.split(".")[0] in STUB_PACKAGES]:
            del sys.modules[name]


def _robot(rclpy, Robot):
    confine()  # DDS on loopback like our nodes (tests/test_ros2_network.py runs a stock client)
    rclpy.init(domain_id=DOMAIN)  # crisp_py uses rclpy's global context
    try:
        robot = Robot.from_yaml("fr3")  # stock FR3 config: base, fr3_hand_tcp, fr3_joint1..7
        robot.wait_until_ready(timeout=20.0)
        yield robot
    finally:
        rclpy.shutdown()


def test_stock_default_cartesian_impedance_applies_with_no_parameter_rejected(crisp_robot):
    from crisp_py.config.path import find_config

    client = crisp_robot.cartesian_controller_parameters_client
    client.wait_until_ready(timeout_sec=10.0)
    path = find_config("control/default_cartesian_impedance.yaml")
    stock = yaml.safe_load(path.read_text())
    client.load_param_config(path)  # crisp_py raises if a parameter is missing or rejected
    applied = dict(zip(stock, client.get_parameters(list(stock))))
    assert applied == stock
    print(f"\ncrisp_py applied {len(stock)} stock parameters, 0 rejected: {sorted(stock)}")


def test_move_to_reaches_the_target_within_3_mm(crisp_robot):
    robot = crisp_robot
    target = robot.end_effector_pose.copy()
    target.position = target.position + np.array([0.05, 0.03, -0.04])
    robot.move_to(pose=target, speed=0.1)
    assert wait_for(lambda: np.linalg.norm(robot.end_effector_pose.position - target.position) < 0.003, 30.0)
    wait_for(lambda: np.linalg.norm(robot.end_effector_pose.position - target.position) < 0.0005, 3.0)  # settle, for the note
    error_mm = 1000 * np.linalg.norm(robot.end_effector_pose.position - target.position)
    print(f"\ncrisp_py move_to: {error_mm:.2f} mm from the target")


def test_gripper_opens_and_closes_through_the_franka_hand_adapter(crisp_robot):
    from crisp_py.gripper import Gripper

    # crisp_py 3.6's stock gripper_franka.yaml moves at most max_delta = 0.1 per command, so from open
    # it sends 0.9, which the adapter (binary, <= 0.5 grasps) reads as "stay open": raise it here.
    gripper = Gripper.from_yaml("gripper_franka", node=crisp_robot.node, spin_node=False, max_delta=1.0)
    gripper.wait_until_ready(timeout=10.0)
    gripper.close()
    assert wait_for(lambda: gripper.value < 0.05, 30.0), gripper.value
    gripper.open()
    assert wait_for(lambda: gripper.value > 0.95, 30.0), gripper.value
    print(f"\ncrisp_py gripper: closed and opened through the adapter (now {gripper.value:.3f})")


def test_stock_gripper_config_never_crosses_the_adapters_threshold_from_open(crisp_robot):
    """What stock crisp_py users see with the Franka hand: close() from open sends 0.9, the hand stays open."""
    from crisp_py.gripper import Gripper
    from std_msgs.msg import Float64MultiArray

    sent: list[float] = []
    crisp_robot.node.create_subscription(Float64MultiArray, "/gripper/gripper_position_controller/commands",
                                         lambda m: sent.append(m.data[0]), 10)
    gripper = Gripper.from_yaml("gripper_franka", node=crisp_robot.node, spin_node=False)
    gripper.wait_until_ready(timeout=10.0)
    assert wait_for(lambda: gripper.value > 0.95, 30.0)
    sent.clear()
    gripper.close()
    assert wait_for(lambda: len(sent) >= 5, 20.0)
    assert min(sent) == pytest.approx(0.9, abs=0.02)  # never at or below the adapter's 0.5
