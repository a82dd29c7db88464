"""Ros2Backend against publishers and subscribers shaped like the real FR3 stack's: crisp's
pose_broadcaster (reliable ``current_pose``), crisp's twist_broadcaster (end-effector frame),
franka_ros2's best-effort ``external_wrench_in_base_frame`` (the robot's force on the world), and
crisp's reliable ``target_pose``/``target_joint`` subscriptions and the Franka-hand adapter."""

from __future__ import annotations

import contextlib
import functools
import os
import threading

import numpy as np
import pytest

pytest.importorskip("rclpy")

import backend_episode  # noqa: E402

from robot_servers.backends.ros2 import Ros2Backend, Ros2Config  # noqa: E402
from robot_servers.ros2.network import init_context  # noqa: E402

pytestmark = [pytest.mark.ros2, pytest.mark.timeout(60)]

DOMAIN = 102 + os.getpid() % 60  # apart from test_ros2's domains
wait_for = functools.partial(backend_episode.wait_for, period=0.02)
DOWN = np.array([1.0, 0.0, 0.0, 0.0])  # xyzw: the TCP pointing down, R = diag(1, -1, -1)
FRANKA_WRENCH = "franka_robot_state_broadcaster/external_wrench_in_base_frame"


class FrankaShapedArm:
    """An in-process node standing in for franka_ros2 + crisp: publishes the state topics at 100 Hz with
    their QoS and records what arrives on the command topics through reliable subscriptions."""

    def __init__(self, domain: int, twist: bool = True):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from geometry_msgs.msg import PoseStamped, TwistStamped, WrenchStamped
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray

        self.pose = np.array([0.4, 0.0, 0.3, *DOWN])
        self.velocity = np.zeros(3)  # base frame, integrated into the published pose
        self.twist_ee = np.zeros(6)
        self.franka_wrench = np.zeros(6)
        self.received: dict[str, list] = {"target_pose": [], "target_joint": [], "gripper": []}
        self._context = init_context(domain)
        node = self.node = rclpy.create_node("franka_shaped_arm", context=self._context)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        best_effort = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
        self._pose_pub = node.create_publisher(PoseStamped, "current_pose", reliable)
        self._joint_pub = node.create_publisher(JointState, "joint_states", reliable)
        self._wrench_pub = node.create_publisher(WrenchStamped, FRANKA_WRENCH, best_effort)
        self._twist_pub = node.create_publisher(TwistStamped, "current_twist", reliable) if twist else None
        self._gripper_pub = node.create_publisher(JointState, "gripper/joint_states", reliable)
        node.create_subscription(PoseStamped, "target_pose", lambda m: self.received["target_pose"].append(m), reliable)
        node.create_subscription(JointState, "target_joint", lambda m: self.received["target_joint"].append(m), reliable)
        node.create_subscription(Float64MultiArray, "gripper/gripper_position_controller/commands",
                                 lambda m: self.received["gripper"].append(list(m.data)), reliable)
        self._last = 0.0
        node.create_timer(0.01, self._publish)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(node)
        self._stop = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while not self._stop and self._context.ok():
            self._executor.spin_once(timeout_sec=0.05)

    def _publish(self):
        from robot_servers.ros2 import messages

        now = self.node.get_clock().now().nanoseconds * 1e-9
        self.pose[:3] += self.velocity * (now - self._last if self._last else 0.0)  # a late tick still moves the right distance
        self._last = now
        self._pose_pub.publish(messages.pose_msg(self.pose, "base", now))
        self._joint_pub.publish(messages.joint_msg([f"fr3_joint{i}" for i in range(1, 8)],
                                                   [0.0, -0.78, 0.0, -2.36, 0.0, 1.57, 0.78], [0.0] * 7, seconds=now))
        self._wrench_pub.publish(messages.wrench_msg(self.franka_wrench, "base", now))
        if self._twist_pub is not None:
            self._twist_pub.publish(messages.twist_msg(self.twist_ee, "fr3_hand_tcp", now))
        self._gripper_pub.publish(messages.joint_msg(["fr3_finger_joint1"], [1.0], seconds=now))

    def close(self):
        self._stop = True
        self._thread.join(timeout=2.0)
        self.node.destroy_node()
        self._context.try_shutdown()


@contextlib.contextmanager
def arm_and_backend(offset: int, twist: bool = True, **options):
    arm = FrankaShapedArm(DOMAIN + offset, twist=twist)
    try:
        # staleness is tested elsewhere: a generous limit keeps a starved test thread from tripping it
        with Ros2Backend(Ros2Config(domain_id=DOMAIN + offset, **{"stale_after": 2.0, **options})) as backend:
            yield arm, backend
    finally:
        arm.close()


def test_wrench_from_best_effort_franka_publisher_while_targets_reach_a_reliable_subscriber():
    from rclpy.qos import ReliabilityPolicy

    with arm_and_backend(0) as (arm, backend):
        (info,) = backend._node.get_publishers_info_by_topic(FRANKA_WRENCH)
        assert info.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT  # shaped like franka_ros2's
        arm.franka_wrench = np.array([0.0, 0.0, -12.0, 0.0, 0.5, 0.0])  # the hand pushes down on a table
        assert wait_for(lambda: np.linalg.norm(backend.state().wrench) > 0, 20.0)
        assert backend.state().wrench == pytest.approx([0.0, 0.0, 12.0, 0.0, -0.5, 0.0])  # the table pushes up: +z
        target = arm.pose.copy()
        target[0] += 0.01
        backend.set_target(target)
        from robot_servers.ros2.messages import read_pose

        # an earlier target (the held pose) may be the newest message for a moment: wait for this one
        assert wait_for(lambda: len(arm.received["target_pose"]) >= 1
                        and np.allclose(read_pose(arm.received["target_pose"][-1]), target, rtol=0.0, atol=1e-9),
                        20.0), "target_pose never reached crisp's reliable subscription"
        assert read_pose(arm.received["target_pose"][-1]) == pytest.approx(target)


def test_twist_from_the_end_effector_frame_is_reported_in_the_base_frame_and_quaternions_have_w_non_negative():
    with arm_and_backend(1) as (arm, backend):
        arm.twist_ee = np.array([0.1, 0.2, 0.3, 0.01, 0.02, 0.03])
        arm.pose[3:] = [-0.0, -0.6, 0.0, -0.8]  # crisp may publish either sign of the same rotation
        assert wait_for(lambda: backend.state().velocity_source == "twist" and backend.state().tcp_pose[6] > 0, 20.0)
        state = backend.state()
        assert state.tcp_pose[3:] == pytest.approx([0.0, 0.6, 0.0, 0.8])
        rotation = np.array([[0.28, 0.0, 0.96], [0.0, 1.0, 0.0], [-0.96, 0.0, 0.28]])  # 2·asin(0.6) about y
        assert state.tcp_vel == pytest.approx(np.concatenate([rotation @ arm.twist_ee[:3], rotation @ arm.twist_ee[3:]]), abs=1e-9)
        assert state.warnings == []


def test_without_a_twist_publisher_velocity_comes_from_pose_differences_with_a_warning():
    with arm_and_backend(2, twist=False, velocity_fallback_after=0.2) as (arm, backend):
        arm.velocity = np.array([0.05, 0.0, -0.02])
        assert wait_for(lambda: abs(backend.state().tcp_vel[0] - 0.05) < 0.01 and backend.state().warnings, 20.0)
        state = backend.state()
        assert state.velocity_source == "pose_difference"
        assert state.tcp_vel[:3] == pytest.approx([0.05, 0.0, -0.02], abs=0.01)
        assert any("current_twist" in w and "twist_broadcaster" in w for w in state.warnings)
        assert state.errors == []  # a fallback is a warning, not a fault


def test_a_second_publisher_on_target_pose_is_a_fault_until_it_goes():
    from geometry_msgs.msg import PoseStamped

    with arm_and_backend(3) as (arm, backend):
        intruder = arm.node.create_publisher(PoseStamped, "target_pose", 10)
        assert wait_for(lambda: any("publishers on target_pose" in e for e in backend.state().errors), 20.0)
        assert any("/franka_shaped_arm" in e for e in backend.state().errors), "the error names the other node"
        assert backend.state().controller_mode == "hold"
        with pytest.raises(RuntimeError, match="target_pose"):
            backend.recover()
        arm.node.destroy_publisher(intruder)
        assert wait_for(lambda: not backend.competing_publishers(), 20.0)
        backend.recover()
        assert backend.state().errors == []


def test_a_controller_that_does_not_follow_is_a_fault_naming_the_controller():
    with arm_and_backend(4, not_following_after=0.5) as (arm, backend):
        target = arm.pose.copy()
        target[1] += 0.03
        backend.set_target(target)  # the arm's pose never moves: an inactive controller
        assert wait_for(lambda: any("cartesian_impedance_controller active" in e for e in backend.state().errors), 20.0)
        assert backend.state().controller_mode == "hold"
        arm.franka_wrench = np.array([0.0, 20.0, 0.0, 0.0, 0.0, 0.0])
        backend.recover()
        backend.set_target(target)  # pressing on something: static for a reason, no fault
        assert not wait_for(lambda: bool(backend.state().errors), 1.0)


def test_gripper_commands_follow_the_franka_hand_adapter():
    with arm_and_backend(5) as (arm, backend):
        # the backend is up once the arm's state arrives; DDS may not have matched the gripper topic yet, and a
        # command published before that match is lost (reliable QoS delivers only to matched readers)
        assert wait_for(lambda: backend._gripper_pub.get_subscription_count() > 0, 20.0)
        backend.set_gripper(0.03)
        backend.set_gripper(0.05)
        assert wait_for(lambda: len(arm.received["gripper"]) == 2, 20.0)
        assert arm.received["gripper"] == [[0.0], [1.0]]  # binary, normalized: below 0.04 m grasps
        assert backend.state().gripper_width == pytest.approx(0.08)  # the adapter reports width / 0.08


def test_bad_input_through_the_guard_is_refused_and_publishes_nothing():
    from robot_servers.backends.base import ImpedanceParams
    from robot_servers.control.safety import SafetyBox
    from robot_servers.guard import CommandRejected, GuardConfig, RobotGuard

    with arm_and_backend(6) as (arm, backend):
        guard = RobotGuard(backend, GuardConfig(safety_box=SafetyBox(), on_violation="reject", watchdog_timeout=None))
        bad_stiffness = [ImpedanceParams(translational_stiffness=(np.nan, 100.0, 100.0)),
                         ImpedanceParams(translational_stiffness=(7000.0, 100.0, 100.0)),
                         ImpedanceParams(rotational_stiffness=(-1.0, 10.0, 10.0))]
        for params in bad_stiffness:
            with pytest.raises(CommandRejected, match="stiffness"):
                guard.set_impedance(params)
        with pytest.raises(CommandRejected, match="rotational_ki"):  # crisp's law has no integral term
            guard.set_impedance(ImpedanceParams(rotational_ki=(0.5, 0.5, 0.5)))
        for width in (0.09, -0.01, np.nan):
            with pytest.raises(CommandRejected, match="width"):
                guard.set_gripper(width)
        outside = arm.pose.copy()
        outside[2] = 0.9  # above the box
        with pytest.raises(CommandRejected):
            guard.set_target(outside)
        with pytest.raises(CommandRejected):
            guard.set_target([0.4, 0.0, np.nan, *DOWN])
        # a valid command last: once it arrives, everything published before it has arrived too (reliable, in order)
        inside = arm.pose.copy()
        guard.set_target(inside)
        guard.set_gripper(0.08)
        assert wait_for(lambda: arm.received["target_pose"] and arm.received["gripper"], 20.0)
        assert len(arm.received["target_pose"]) == 1 and arm.received["gripper"] == [[1.0]]
        assert arm.received["target_joint"] == []
