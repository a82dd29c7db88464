"""A ROS 2 node that puts the real-time MuJoCo twin behind the FR3 stack's interface: crisp_controllers'
(>= 2.2) ``cartesian_impedance_controller``, franka_ros2's wrench topic and the Franka-hand adapter of
crisp_controllers_demos.

``python -m robot_servers.ros2.twin_node --domain-id 42 [--robot fr3] [--scene empty] [--no-twist] [--network lan]``

Rehearses, with crisp's names and semantics: every controller parameter the project or crisp_py's
stock configs touch (``robot_servers.ros2.crisp``), stiffness clamped to ``variable_max_stiffness``,
damping d <= 0 → 2·sqrt(k of the parameter), per-joint nullspace weights, the projector, error clips,
``max_delta_tau``; the ``target_pose``, ``target_joint``, ``target_stiffness`` and ``target_wrench``
topics (targets ignored while more than one node publishes them); ``current_pose`` at 250 Hz;
``current_twist`` in the end-effector frame (crisp's twist_broadcaster; ``--no-twist`` rehearses
the demos, which do not start it); franka_ros2's best-effort
``franka_robot_state_broadcaster/external_wrench_in_base_frame`` with Franka's sign (the force the
robot exerts); the hand adapter's ``gripper/gripper_position_controller/commands`` (width/0.08,
binary: <= 0.5 grasps, > 0.5 opens, on transitions) and ``gripper/joint_states`` (one joint,
width/0.08). With task stiffness zero and projector ``none`` crisp's law is a joint impedance toward
``target_joint``; the twin runs its joint move there instead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from robot_servers.limits import MAX_GRIPPER_WIDTH
from robot_servers.processes import running_until_ready

if TYPE_CHECKING:  # the twin imports MuJoCo: only when the node builds one
    from robot_servers.backends.twin import TwinBackend

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TwinNodeConfig:
    node_name: str = "cartesian_impedance_controller"  # crisp's controller name: parameters live here
    namespace: str = ""
    domain_id: int | None = None
    network: Literal["localhost", "lan"] = "localhost"  # see robot_servers.ros2.network
    robot: str = "fr3"
    scene: str = "empty"
    publish_hz: float = 250.0  # crisp's pose_broadcaster default
    frame_id: str = "base"
    joint_reset_duration: float = 2.0
    publish_twist: bool = True  # False: like the demos, which run no twist_broadcaster
    gripper_mode: Literal["franka_hand", "continuous"] = "franka_hand"
    grasp_force: float = 50.0  # N, the adapter's grasp force (the twin's hand does not model force)
    target_pose_topic: str = "target_pose"
    target_joint_topic: str = "target_joint"
    target_stiffness_topic: str = "target_stiffness"
    target_wrench_topic: str = "target_wrench"
    current_pose_topic: str = "current_pose"
    current_twist_topic: str = "current_twist"
    joint_states_topic: str = "joint_states"
    wrench_topic: str = "franka_robot_state_broadcaster/external_wrench_in_base_frame"
    gripper_command_topic: str = "gripper/gripper_position_controller/commands"
    gripper_state_topic: str = "gripper/joint_states"


class TwinNode:
    """Owns a real-time ``TwinBackend`` and a ROS 2 node (own context) serving the FR3 stack's topics."""

    def __init__(self, config: TwinNodeConfig = TwinNodeConfig(), backend: TwinBackend | None = None):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rcl_interfaces.msg import SetParametersResult
        from geometry_msgs.msg import PoseStamped, TwistStamped, WrenchStamped
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray

        from robot_servers.ros2 import crisp, messages, network

        self.config = config
        self._messages = messages
        self._crisp = crisp
        self._SetParametersResult = SetParametersResult
        if backend is None:
            from robot_servers.backends.twin import TwinBackend, TwinConfig

            backend = TwinBackend(TwinConfig(robot=config.robot, scene=config.scene, lockstep=False, cameras=()))
        self.backend = backend
        self.joint_names = tuple(f"{config.robot}_joint{i}" for i in range(1, 8))
        self.ignored_targets = 0
        self._joint_mode = False
        self._joint_worker: threading.Thread | None = None
        self._topic_stiffness: np.ndarray | None = None
        self._hand_open: bool | None = None
        self._closed = False

        self._context = network.init_context(config.domain_id, config.network)
        node = self.node = rclpy.create_node(config.node_name, namespace=config.namespace or None, context=self._context)
        self._values = crisp.defaults(self.joint_names)
        for name, value in self._values.items():
            node.declare_parameter(name, value)
        self._apply(self._values)
        node.add_on_set_parameters_callback(self._on_parameters)

        best_effort = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
        self._pose_pub = node.create_publisher(PoseStamped, config.current_pose_topic, 10)
        self._twist_pub = node.create_publisher(TwistStamped, config.current_twist_topic, 10) if config.publish_twist else None
        self._joint_pub = node.create_publisher(JointState, config.joint_states_topic, 10)
        self._wrench_pub = node.create_publisher(WrenchStamped, config.wrench_topic, best_effort)  # as franka_ros2
        self._gripper_pub = node.create_publisher(JointState, config.gripper_state_topic, 10)
        node.create_subscription(PoseStamped, config.target_pose_topic, self._on_target_pose, 10)
        node.create_subscription(JointState, config.target_joint_topic, self._on_target_joint, 10)
        node.create_subscription(Float64MultiArray, config.target_stiffness_topic, self._on_target_stiffness, 10)
        node.create_subscription(WrenchStamped, config.target_wrench_topic, self._on_target_wrench, 10)
        node.create_subscription(Float64MultiArray, config.gripper_command_topic, self._on_gripper, 10)
        node.create_timer(1.0 / config.publish_hz, self._publish_state)

        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(node)
        self._thread = threading.Thread(target=self._spin, name="twin-node", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._closed and self._context.ok():
            try:
                self._executor.spin_once(timeout_sec=0.05)
            except Exception as exc:
                if self._closed:
                    return
                log.exception("twin node executor: %s", exc)

    # -- commands -------------------------------------------------------------------------

    def _competing(self, topic: str) -> bool:
        if self.node.count_publishers(topic) > 1:
            self.ignored_targets += 1  # crisp refuses targets from competing publishers
            return True
        return False

    def _on_target_pose(self, msg) -> None:
        if self._competing(self.config.target_pose_topic):
            return
        pose = self._messages.read_pose(msg)
        if pose is None or self._joint_mode:
            self.ignored_targets += 1
            return
        try:
            self.backend.set_target(pose)
        except ValueError as exc:
            self.ignored_targets += 1
            log.warning("target_pose rejected: %s", exc)

    def _on_target_joint(self, msg) -> None:
        if self._competing(self.config.target_joint_topic):
            return
        joints = self._messages.read_joints(msg, self.joint_names)
        if joints is None:
            return
        q = joints[0]
        if self._joint_mode:
            if self._joint_worker is None or not self._joint_worker.is_alive():
                goal_reached = np.abs(self.backend.state().q - q).max() < 1e-3
                if not goal_reached:
                    self._joint_worker = threading.Thread(target=self._joint_move, args=(q,), daemon=True)
                    self._joint_worker.start()
        else:
            try:
                self.backend.set_nullspace_target(q)
            except ValueError as exc:  # outside the joint limits: keep the previous posture
                self.ignored_targets += 1
                log.warning("target_joint rejected: %s", exc)

    def _joint_move(self, q: np.ndarray) -> None:
        try:
            self.backend.joint_reset(q, duration=self.config.joint_reset_duration)
        except (ValueError, RuntimeError) as exc:
            log.warning("joint move failed: %s", exc)

    def _on_target_stiffness(self, msg) -> None:
        if len(msg.data) != 6 or not np.all(np.isfinite(msg.data)):
            log.warning("target_stiffness needs 6 finite values; ignored")
            return
        if not self._values["variable_stiffness.enabled"]:
            log.warning("target_stiffness ignored: variable_stiffness.enabled is false")
            return
        self._topic_stiffness = np.asarray(msg.data, dtype=np.float64)
        self._apply(self._values)

    def _on_target_wrench(self, msg) -> None:
        wrench = self._messages.read_wrench(msg)
        if wrench is not None and np.any(wrench != 0):
            log.warning("target_wrench is not modelled by the twin; ignored")

    def _on_gripper(self, msg) -> None:
        if len(msg.data) < 1 or not np.isfinite(msg.data[0]):
            return
        value = float(np.clip(msg.data[0], 0.0, 1.0))
        if self.config.gripper_mode == "continuous":
            self.backend.set_gripper(value * MAX_GRIPPER_WIDTH)
            return
        open_hand = value > 0.5
        if open_hand != self._hand_open:  # the adapter acts on transitions only
            self._hand_open = open_hand
            self.backend.set_gripper(MAX_GRIPPER_WIDTH if open_hand else 0.0)

    # -- parameters -----------------------------------------------------------------------

    def _on_parameters(self, parameters: Sequence) -> object:
        values = dict(self._values)
        for p in parameters:
            if p.name not in values:
                continue
            reason = self._crisp.check_value(p.name, p.value)
            if reason:
                return self._SetParametersResult(successful=False, reason=reason)
            values[p.name] = p.value
        if float(values["nullspace.damping"]) < 0:
            log.error("nullspace.damping %s < 0: crisp applies it as given (negative joint damping)",
                      values["nullspace.damping"])
        self._apply(values)
        self._values = values
        return self._SetParametersResult(successful=True)

    def _apply(self, values: dict) -> None:
        """Run the twin with the gains crisp would apply for ``values``."""
        crisp = self._crisp
        self._joint_mode = values["nullspace.projector_type"] == "none" and all(
            float(values[n]) == 0.0 for n in crisp.STIFFNESS_NAMES)
        if self._joint_mode:
            return
        effective = dict(values)
        if self._topic_stiffness is not None:
            effective.update(zip(crisp.STIFFNESS_NAMES, self._topic_stiffness))
        params = crisp.parameters_to_impedance(effective, self.joint_names)
        self.backend.set_impedance(crisp.within_project_limits(params))

    # -- state ----------------------------------------------------------------------------

    def _publish_state(self) -> None:
        from robot_servers.control.pose import quat_to_matrix

        m, c = self._messages, self.config
        s = self.backend.state()
        now = self.node.get_clock().now().nanoseconds * 1e-9
        self._pose_pub.publish(m.pose_msg(s.tcp_pose, c.frame_id, now))
        if self._twist_pub is not None:
            to_ee = quat_to_matrix(s.tcp_pose[3:7]).T  # crisp's twist is in the end-effector frame
            twist = np.concatenate([to_ee @ s.tcp_vel[:3], to_ee @ s.tcp_vel[3:]])
            self._twist_pub.publish(m.twist_msg(twist, f"{c.robot}_hand_tcp", now))
        self._joint_pub.publish(m.joint_msg(self.joint_names, s.q, s.dq, seconds=now))
        self._wrench_pub.publish(m.wrench_msg(-s.wrench, c.frame_id, now))  # Franka: the robot's force on the world
        self._gripper_pub.publish(m.joint_msg((f"{c.robot}_finger_joint1",), (s.gripper_width / MAX_GRIPPER_WIDTH,),
                                              seconds=now))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._thread.join(timeout=2.0)
        try:
            self._executor.shutdown(timeout_sec=1.0)
            self.node.destroy_node()
        finally:
            self._context.try_shutdown()
            self.backend.close()


@contextlib.contextmanager
def running_twin_node(domain_id: int, *options: str, timeout: float = 30.0) -> Iterator[subprocess.Popen]:
    """Run the twin node as a subprocess on ``domain_id`` (extra command-line ``options``); wait until it serves."""
    command = [sys.executable, "-m", "robot_servers.ros2.twin_node", "--domain-id", str(domain_id), *options]
    with running_until_ready(command, "twin node", timeout) as process:
        yield process


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the MuJoCo twin on the FR3 stack's ROS 2 topics.")
    parser.add_argument("--domain-id", type=int, default=None)
    parser.add_argument("--namespace", default="")
    parser.add_argument("--network", default="localhost", choices=["localhost", "lan"],
                        help="DDS on loopback only (default), or ROS's defaults: reachable from the LAN")
    parser.add_argument("--robot", default="fr3", choices=["fr3", "panda"])
    parser.add_argument("--scene", default="empty")
    parser.add_argument("--publish-hz", type=float, default=TwinNodeConfig.publish_hz)
    parser.add_argument("--no-twist", action="store_true", help="publish no current_twist (as the FR3 demos)")
    parser.add_argument("--gripper", default="franka_hand", choices=["franka_hand", "continuous"])
    parser.add_argument("--grasp-force", type=float, default=TwinNodeConfig.grasp_force)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    node = TwinNode(TwinNodeConfig(domain_id=args.domain_id, namespace=args.namespace, network=args.network,
                                   robot=args.robot, scene=args.scene, publish_hz=args.publish_hz,
                                   publish_twist=not args.no_twist, gripper_mode=args.gripper,
                                   grasp_force=args.grasp_force))
    print("READY", flush=True)
    stop = threading.Event()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    node.close()


if __name__ == "__main__":
    main()
