"""A ROS 2 node that puts the real-time MuJoCo twin behind crisp_controllers' interface.

``python -m robot_servers.ros2.twin_node --domain-id 42 [--robot fr3] [--scene empty]``

Subscribes ``target_pose`` (PoseStamped), ``target_joint`` (JointState: nullspace posture) and
``gripper/command`` (Float64MultiArray); publishes ``current_pose``, ``current_twist``,
``joint_states``, ``external_wrench`` and ``gripper/joint_states``; declares crisp's parameters
(``task.k_pos_x`` …, ``task.error_clip.x`` …, ``nullspace.*``, ``max_delta_tau``) with crisp's
bounds and applies them live. Like crisp it ignores ``target_pose`` while more than one node
publishes it. With all task stiffness at zero and ``nullspace.projector_type`` ``none`` the crisp
law is a joint impedance toward ``target_joint``; the twin runs its joint move there instead.
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
from typing import TYPE_CHECKING

import numpy as np

from robot_servers.processes import running_until_ready

if TYPE_CHECKING:  # the twin imports MuJoCo: only when the node builds one
    from robot_servers.backends.twin import TwinBackend

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TwinNodeConfig:
    node_name: str = "cartesian_impedance_controller"  # crisp's controller name: parameters live here
    namespace: str = ""
    domain_id: int | None = None
    robot: str = "fr3"
    scene: str = "empty"
    publish_hz: float = 200.0
    frame_id: str = "base"
    joint_reset_duration: float = 2.0
    target_pose_topic: str = "target_pose"
    target_joint_topic: str = "target_joint"
    current_pose_topic: str = "current_pose"
    current_twist_topic: str = "current_twist"
    joint_states_topic: str = "joint_states"
    wrench_topic: str = "external_wrench"
    gripper_command_topic: str = "gripper/command"
    gripper_state_topic: str = "gripper/joint_states"


class TwinNode:
    """Owns a real-time ``TwinBackend`` and a ROS 2 node (own context) serving crisp's topics."""

    def __init__(self, config: TwinNodeConfig = TwinNodeConfig(), backend: TwinBackend | None = None):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rcl_interfaces.msg import SetParametersResult
        from geometry_msgs.msg import PoseStamped, TwistStamped, WrenchStamped
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray

        from robot_servers.ros2 import crisp, messages

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
        self.received_targets = 0
        self._joint_mode = False
        self._joint_worker: threading.Thread | None = None
        self._closed = False

        self._context = rclpy.Context()
        self._context.init(domain_id=config.domain_id)
        node = self.node = rclpy.create_node(config.node_name, namespace=config.namespace or None, context=self._context)
        initial = {**crisp.DEFAULTS, **crisp.impedance_to_parameters(self.backend.controller.params)}
        for name, value in initial.items():
            node.declare_parameter(name, value)
        self._values = dict(initial)
        node.add_on_set_parameters_callback(self._on_parameters)

        self._pose_pub = node.create_publisher(PoseStamped, config.current_pose_topic, 10)
        self._twist_pub = node.create_publisher(TwistStamped, config.current_twist_topic, 10)
        self._joint_pub = node.create_publisher(JointState, config.joint_states_topic, 10)
        self._wrench_pub = node.create_publisher(WrenchStamped, config.wrench_topic, 10)
        self._gripper_pub = node.create_publisher(JointState, config.gripper_state_topic, 10)
        node.create_subscription(PoseStamped, config.target_pose_topic, self._on_target_pose, 10)
        node.create_subscription(JointState, config.target_joint_topic, self._on_target_joint, 10)
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

    def _on_target_pose(self, msg) -> None:
        self.received_targets += 1
        if self.node.count_publishers(self.config.target_pose_topic) > 1:
            self.ignored_targets += 1  # crisp refuses targets from competing publishers
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

    def _on_gripper(self, msg) -> None:
        if len(msg.data) < 1:
            return
        try:
            self.backend.set_gripper(float(msg.data[0]))
        except ValueError as exc:
            log.warning("gripper command rejected: %s", exc)

    def _on_parameters(self, parameters: Sequence) -> object:
        values = dict(self._values)
        for p in parameters:
            if p.name not in values:
                continue
            value = p.value
            if p.name.startswith("task.k_") and not 0.0 <= value <= self._crisp.STIFFNESS_MAX:
                return self._SetParametersResult(successful=False, reason=f"{p.name}: outside [0, {self._crisp.STIFFNESS_MAX}]")
            if p.name == "nullspace.stiffness" and not 0.0 <= value <= self._crisp.NULLSPACE_STIFFNESS_MAX:
                return self._SetParametersResult(successful=False, reason=f"{p.name}: outside [0, 500]")
            if p.name == "nullspace.projector_type" and value not in ("kinematic", "dynamic", "none"):
                return self._SetParametersResult(successful=False, reason=f"{p.name}: not kinematic|dynamic|none")
            values[p.name] = value
        joint_mode = values["nullspace.projector_type"] == "none" and all(
            values[f"task.k_{kind}_{a}"] == 0.0 for kind in ("pos", "rot") for a in "xyz")
        if not joint_mode:
            try:
                params = self._crisp.parameters_to_impedance(values).validate()
            except ValueError as exc:
                return self._SetParametersResult(successful=False, reason=str(exc))
            self.backend.set_impedance(params)
        self._values = values
        self._joint_mode = joint_mode
        return self._SetParametersResult(successful=True)

    # -- state ----------------------------------------------------------------------------

    def _publish_state(self) -> None:
        m, c = self._messages, self.config
        s = self.backend.state()
        now = self.node.get_clock().now().nanoseconds * 1e-9
        self._pose_pub.publish(m.pose_msg(s.tcp_pose, c.frame_id, now))
        self._twist_pub.publish(m.twist_msg(s.tcp_vel, c.frame_id, now))
        self._joint_pub.publish(m.joint_msg(self.joint_names, s.q, s.dq, seconds=now))
        self._wrench_pub.publish(m.wrench_msg(s.wrench, c.frame_id, now))
        half = s.gripper_width / 2
        self._gripper_pub.publish(m.joint_msg(("finger_joint1", "finger_joint2"), (half, half), seconds=now))

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
def running_twin_node(domain_id: int, timeout: float = 30.0) -> Iterator[subprocess.Popen]:
    """Run the twin node as a subprocess on ``domain_id``; wait until it serves; stop it on exit."""
    command = [sys.executable, "-m", "robot_servers.ros2.twin_node", "--domain-id", str(domain_id)]
    with running_until_ready(command, "twin node", timeout) as process:
        yield process


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the MuJoCo twin on crisp_controllers' ROS 2 topics.")
    parser.add_argument("--domain-id", type=int, default=None)
    parser.add_argument("--namespace", default="")
    parser.add_argument("--robot", default="fr3", choices=["fr3", "panda"])
    parser.add_argument("--scene", default="empty")
    parser.add_argument("--publish-hz", type=float, default=200.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    node = TwinNode(TwinNodeConfig(domain_id=args.domain_id, namespace=args.namespace, robot=args.robot,
                                   scene=args.scene, publish_hz=args.publish_hz))
    print("READY", flush=True)
    stop = threading.Event()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    node.close()


if __name__ == "__main__":
    main()
