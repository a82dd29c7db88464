"""``Ros2Backend``: a Franka arm behind ROS 2 with crisp_controllers' (>= 2.2) Cartesian impedance
controller, franka_ros2 and the Franka-hand adapter of crisp_controllers_demos.

Commands go out reliable, as crisp subscribes them (``target_pose``, ``target_joint``); gains are the
controller's live parameters (``robot_servers.ros2.crisp``). State subscriptions are best-effort, so
reliable and best-effort publishers both reach them: ``current_pose`` (read with w >= 0),
``joint_states``, crisp's ``current_twist`` (end-effector frame, rotated into the base frame; pose
differences when nothing publishes it, said in ``velocity_source`` and ``warnings``) and franka_ros2's
external wrench (sign turned into this project's: the force the environment exerts on the hand).

Faults latch an error and hold the measured pose until ``recover()``: stale state, a malformed message,
another publisher on a command topic, a controller that does not follow. rclpy is imported lazily
(extra ``ros2``) and runs in its own context and executor thread.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import numpy as np

from robot_servers.backends.base import Backend, ImpedanceParams, RobotState
from robot_servers.franka import HOME_Q  # noqa: F401  (re-exported: the ROS 2 tests' home posture)
from robot_servers.limits import MAX_GRIPPER_WIDTH, validate_gripper, validate_pose
from robot_servers.cameras.specs import camera_errors, open_task_cameras
from robot_servers.ros2.config import Ros2Config, import_rclpy  # noqa: F401  (import_rclpy re-exported)
from robot_servers.ros2.network import init_context

log = logging.getLogger(__name__)



class _Latest:
    """The newest message of one topic and when it arrived (monotonic seconds)."""

    __slots__ = ("value", "received", "count")

    def __init__(self):
        self.value = None
        self.received = 0.0
        self.count = 0


class Ros2Backend(Backend):
    """Cartesian impedance through crisp_controllers' topics and parameters."""

    name = "ros2"
    _spin_thread: threading.Thread | None = None  # until the node spins: a failed start has none to join

    def __init__(self, config: Ros2Config = Ros2Config(), **overrides):
        if overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config
        rclpy = import_rclpy()
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from geometry_msgs.msg import PoseStamped, TwistStamped, WrenchStamped
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray

        from robot_servers.ros2 import messages
        from robot_servers.ros2.monitor import FollowingMonitor, PoseDifferenceVelocity
        from robot_servers.ros2.parameters import ControllerParameters

        self._messages = messages
        self._Float64MultiArray = Float64MultiArray
        self._lock = threading.RLock()
        self._errors: list[str] = []
        self._mode = "impedance"
        self._closed = False
        self._pose, self._twist, self._joints, self._wrench, self._gripper = (_Latest() for _ in range(5))
        self._pose_velocity = PoseDifferenceVelocity()
        self._following = FollowingMonitor(config.not_following_after)
        self._target: np.ndarray | None = None
        self._started = time.monotonic()
        self._cameras: dict = {}

        self._context = init_context(config.domain_id, config.network)
        self._node = rclpy.create_node(config.node_name, namespace=config.namespace or None, context=self._context)
        policy = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}
        command_qos = QoSProfile(depth=config.qos_depth, reliability=policy[config.command_reliability])
        state_qos = QoSProfile(depth=config.qos_depth, reliability=policy[config.state_reliability])
        node = self._node
        self._pose_pub = node.create_publisher(PoseStamped, config.target_pose_topic, command_qos)
        self._joint_pub = node.create_publisher(JointState, config.target_joint_topic, command_qos)
        self._gripper_pub = node.create_publisher(Float64MultiArray, config.gripper_command_topic, command_qos) \
            if config.gripper_command_topic else None
        node.create_subscription(PoseStamped, config.current_pose_topic, self._on_pose, state_qos)
        node.create_subscription(JointState, config.joint_states_topic, self._on_joints, state_qos)
        if config.current_twist_topic:
            node.create_subscription(TwistStamped, config.current_twist_topic, self._on_twist, state_qos)
        if config.wrench_topic:
            node.create_subscription(WrenchStamped, config.wrench_topic, self._on_wrench, state_qos)
        if config.gripper_state_topic:
            node.create_subscription(JointState, config.gripper_state_topic, self._on_gripper, state_qos)
        self._parameters = ControllerParameters(node, config.controller_node, config.parameter_timeout)
        self._watchdog = node.create_timer(min(config.stale_after / 4, 0.02), self._check_stale)
        self._fault_timer = node.create_timer(0.1, self._check_faults)

        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(node)
        self._spin_thread = threading.Thread(target=self._spin, name="ros2-backend", daemon=True)
        self._spin_thread.start()
        try:
            self._wait_for_state(config.connect_timeout)
            with self._lock:
                self._target = self._pose.value.copy()
            if config.set_impedance_on_start is not None:
                self.set_impedance(config.set_impedance_on_start)
            self._cameras = open_task_cameras(config.cameras, config.task_cameras)
        except BaseException:
            self.close()
            raise

    # -- executor thread ------------------------------------------------------------------

    def _spin(self) -> None:
        while not self._closed and self._context.ok():
            try:
                self._executor.spin_once(timeout_sec=0.05)
            except Exception as exc:  # a shut-down context while closing, or a callback bug: never kill the thread
                if self._closed:
                    return
                log.exception("ros2 executor: %s", exc)

    def _flag(self, message: str) -> None:
        with self._lock:
            if message not in self._errors:
                log.error("ros2 backend: %s", message)
                self._errors.append(message)

    def _fault(self, message: str) -> None:
        """Latch ``message`` and hold, atomically: no reader sees the error without the hold."""
        with self._lock:
            self._flag(message)
            self._hold_locked()

    def _store(self, slot: _Latest, value, topic: str) -> bool:
        if value is None:
            self._fault(f"malformed message on {topic} (non-finite or wrong shape); holding")
            return False
        with self._lock:
            slot.value = value
            slot.received = time.monotonic()
            slot.count += 1
        return True

    def _on_pose(self, msg) -> None:
        pose = self._messages.read_pose(msg)
        if self._store(self._pose, pose, self.config.current_pose_topic):
            stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
            with self._lock:
                self._pose_velocity.add(stamp if stamp > 0 else self._pose.received, pose)

    def _on_twist(self, msg) -> None:
        self._store(self._twist, self._messages.read_twist(msg), self.config.current_twist_topic)

    def _on_wrench(self, msg) -> None:
        wrench = self._messages.read_wrench(msg)
        if wrench is not None and self.config.wrench_convention == "franka":
            wrench = -wrench  # Franka: force the robot exerts; this project: force exerted on the robot
        self._store(self._wrench, wrench, self.config.wrench_topic)

    def _on_joints(self, msg) -> None:
        self._store(self._joints, self._messages.read_joints(msg, self.config.joint_names), self.config.joint_states_topic)

    def _on_gripper(self, msg) -> None:
        position = np.asarray(msg.position, dtype=np.float64)
        width = None
        if position.size and np.all(np.isfinite(position)):
            width = float(position[0]) * MAX_GRIPPER_WIDTH if self.config.gripper_normalized else float(position.sum())
        self._store(self._gripper, width, self.config.gripper_state_topic)

    def _ages(self) -> dict[str, float]:
        now = time.monotonic()
        return {
            self.config.current_pose_topic: now - self._pose.received,
            self.config.joint_states_topic: now - self._joints.received,
        }

    def _check_stale(self) -> None:
        with self._lock:
            if self._pose.value is None or self._joints.value is None:  # topics match one by one: wait for both
                return
            for topic, age in self._ages().items():
                if age > self.config.stale_after:
                    if not any(e.startswith("stale state") for e in self._errors):
                        self._fault(f"stale state: no {topic} for more than {1000 * self.config.stale_after:.0f} ms")
                    return

    def competing_publishers(self) -> dict[str, list[str]]:
        """Command topics with publishers besides this backend (crisp then ignores every target): the
        publishing nodes on each, this backend's own included."""
        nodes = {}
        for topic in (self.config.target_pose_topic, self.config.target_joint_topic):
            publishers = self._node.get_publishers_info_by_topic(self._node.resolve_topic_name(topic))
            if len(publishers) > 1:
                nodes[topic] = sorted(f"{p.node_namespace.rstrip('/')}/{p.node_name}" for p in publishers)
        return nodes

    def _check_faults(self) -> None:
        for topic, nodes in self.competing_publishers().items():
            self._fault(f"{len(nodes)} publishers on {topic} (nodes {', '.join(nodes)}): crisp_controllers "
                        "ignores its targets while another node publishes there; stop the other publisher")
        with self._lock:
            if self._mode != "impedance" or self._errors or self._pose.value is None or self._target is None:
                self._following.reset()
                return
            wrench = self._wrench.value if self.config.wrench_topic else None
            fault = self._following.check(time.monotonic(), self._pose.value, self._target, wrench)
            if fault:
                self._fault(fault)

    def _hold_locked(self) -> None:
        with self._lock:
            if self._pose.value is None:
                return
            self._mode = "hold"
            self._target = self._pose.value.copy()
            self._publish_target(self._target)

    def _wait_for_state(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._pose.value is not None and self._joints.value is not None:
                    return
            time.sleep(0.01)
        raise TimeoutError(
            f"ros2 backend: no {self.config.current_pose_topic!r} and {self.config.joint_states_topic!r} "
            f"within {timeout} s (domain {self.config.domain_id}, namespace {self.config.namespace!r}, "
            f"network {self.config.network!r}: network='lan' reaches a controller on another machine)")

    def _publish_target(self, pose: np.ndarray) -> None:
        now = self._node.get_clock().now().nanoseconds * 1e-9
        self._pose_pub.publish(self._messages.pose_msg(pose, self.config.frame_id, now))

    # -- parameters -----------------------------------------------------------------------

    def _set_parameters(self, values: dict[str, object]) -> None:
        self._parameters.set(values)

    def _get_parameters(self, names: list[str]) -> dict[str, object]:
        return self._parameters.get(names)

    def impedance(self) -> ImpedanceParams:
        """The gains the controller applies now (its caps and damping rules included), read back from it."""
        from robot_servers.ros2 import crisp

        values = self._get_parameters(list(crisp.defaults(self.config.joint_names)))
        return crisp.parameters_to_impedance({k: v for k, v in values.items() if v is not None}, self.config.joint_names)

    def preflight(self, window: float = 1.0) -> dict:
        """Controller state, topic rates, QoS matches, limits and gripper mode (``--check``)."""
        from robot_servers.ros2.preflight import preflight

        return preflight(self, window)

    # -- Backend --------------------------------------------------------------------------

    def _velocity_locked(self) -> tuple[np.ndarray, str, list[str]]:
        from robot_servers.ros2.monitor import POSE_DIFFERENCE, TWIST, twist_to_base

        fresh = time.monotonic() - self._twist.received < max(self.config.velocity_fallback_after, self.config.stale_after)
        if self._twist.value is not None and fresh:
            return twist_to_base(self._twist.value, self._pose.value), TWIST, []
        if time.monotonic() - self._started < self.config.velocity_fallback_after and self.config.current_twist_topic:
            return self._pose_velocity.velocity(), POSE_DIFFERENCE, []  # the twist may still be on its way
        topic = self.config.current_twist_topic or "current_twist"
        return self._pose_velocity.velocity(), POSE_DIFFERENCE, [
            f"tcp_vel from current_pose differences: nothing publishes {topic} "
            "(start crisp's twist_broadcaster for a measured twist)"]

    def state(self) -> RobotState:
        with self._lock:
            if self._pose.value is None or self._joints.value is None:
                raise RuntimeError("ros2 backend has no state yet")
            self._check_stale()  # a reader never sees a stale state that is not yet latched
            errors = list(self._errors) + camera_errors(self._cameras)
            velocity, source, warnings = self._velocity_locked()
            q, dq = self._joints.value
            return RobotState(
                tcp_pose=self._pose.value.copy(),
                tcp_vel=velocity,
                wrench=np.zeros(6) if self._wrench.value is None else self._wrench.value.copy(),
                q=q.copy(),
                dq=dq.copy(),
                gripper_width=0.0 if self._gripper.value is None else float(self._gripper.value),
                target_pose=self._target.copy(),
                controller_mode=self._mode,
                errors=errors,
                timestamp=self._pose.received,
                velocity_source=source,
                warnings=warnings,
            )

    def state_age(self) -> float:
        """Seconds since the newest ``current_pose`` arrived."""
        return time.monotonic() - self._pose.received

    def set_target(self, pose, gripper=None) -> None:
        pose = validate_pose(pose, "pose")
        if gripper is not None:
            gripper = validate_gripper(gripper)
        with self._lock:
            if self._errors or self._mode != "impedance":
                raise RuntimeError(f"ros2 backend is in mode {self._mode!r} with errors {self._errors}; call recover()")
            self._target = pose
            self._publish_target(pose)
        if gripper is not None:
            self.set_gripper(gripper)

    def gripper_command(self, width: float) -> float:
        """What goes on the gripper command topic for ``width`` (m)."""
        if self.config.gripper_binary:
            width = MAX_GRIPPER_WIDTH if width > MAX_GRIPPER_WIDTH / 2 else 0.0  # the hand opens or grasps
        return width / MAX_GRIPPER_WIDTH if self.config.gripper_normalized else width

    def set_gripper(self, width) -> None:
        width = validate_gripper(width, "width")
        if self._gripper_pub is None:
            raise RuntimeError("ros2 backend has no gripper_command_topic configured")
        self._gripper_pub.publish(self._Float64MultiArray(data=[self.gripper_command(width)]))

    def set_impedance(self, params: ImpedanceParams) -> None:
        """Gains as crisp applies them: ``variable_max_stiffness`` raised first where needed (within
        crisp's bounds and when ``raise_stiffness_cap``), else ValueError naming both numbers."""
        from robot_servers.ros2 import crisp

        values = crisp.impedance_to_parameters(params, self.config.joint_names)
        caps = self._get_parameters([crisp.CAP_TRANSLATIONAL, crisp.CAP_ROTATIONAL])
        if None in caps.values():
            raise RuntimeError(f"controller {self.config.controller_node!r} has no variable_max_stiffness: "
                               "crisp_controllers >= 2.2 expected")
        raised = crisp.raised_caps(params, caps, self.config.raise_stiffness_cap)
        self._set_parameters({**raised, **values})  # caps first: the stiffness never passes through a clamp

    def set_nullspace_target(self, q) -> None:
        """Preferred joint posture for the controller's nullspace term (``target_joint``)."""
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (7,) or not np.all(np.isfinite(q)):
            raise ValueError(f"q: expected 7 finite joint angles, got {q.tolist()}")
        now = self._node.get_clock().now().nanoseconds * 1e-9
        self._joint_pub.publish(self._messages.joint_msg(self.config.joint_names, q, seconds=now))

    def home_joints(self) -> np.ndarray:
        return np.array(self.config.home_q, dtype=np.float64)

    def joint_reset(self, q=None, duration: float = 3.0) -> None:
        """Joint impedance toward ``q`` through crisp's nullspace term, then every parameter restored.

        Damping is positive before anything else changes and stays positive while restoring.
        """
        from robot_servers.ros2 import crisp

        target = np.asarray(self.config.home_q if q is None else q, dtype=np.float64)
        if target.shape != (7,) or not np.all(np.isfinite(target)):
            raise ValueError(f"q: expected 7 finite joint angles, got {np.asarray(q).tolist()}")
        with self._lock:
            if self._errors:
                raise RuntimeError(f"ros2 backend has errors {self._errors}; call recover() first")
        reset = crisp.joint_reset_parameters(self.config.joint_reset_stiffness, self.config.joint_reset_max_torque,
                                             self.config.joint_names)
        saved = self._get_parameters(list(reset))
        restore = dict(saved)
        if not (isinstance(saved["nullspace.damping"], float) and saved["nullspace.damping"] > 0):
            restore["nullspace.damping"] = reset["nullspace.damping"]  # never restore a negative (or unset) damping
        self._mode = "joint"
        try:
            self.set_nullspace_target(target)
            self._set_parameters({"nullspace.damping": reset["nullspace.damping"], **reset})
            allowed = max(duration, 0.5) * 3
            deadline = time.monotonic() + allowed
            while time.monotonic() < deadline:
                with self._lock:
                    q_now, dq_now = self._joints.value
                if np.abs(q_now - target).max() < self.config.joint_reset_tolerance and np.abs(dq_now).max() < 0.05:
                    break
                self.set_nullspace_target(target)  # crisp may have dropped a message while switching
                time.sleep(0.02)
            else:
                self._flag(f"joint reset did not reach {target.round(3).tolist()} within {allowed:.1f} s")
        finally:
            with self._lock:
                self._target = self._pose.value.copy()
                self._publish_target(self._target)  # restore stiffness around where the arm is now
            self._set_parameters(restore)
            with self._lock:
                self._mode = "impedance" if not self._errors else "hold"
                self._following.reset()
        if self._errors:
            raise RuntimeError(f"joint reset failed: {self._errors}")

    def recover(self) -> None:
        deadline = time.monotonic() + max(1.0, 10 * self.config.stale_after)
        while any(a > self.config.stale_after for a in self._ages().values()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"ros2 backend: state still stale ({self._ages()}); is the controller running?")
            time.sleep(0.01)
        competing = self.competing_publishers()
        if competing:
            raise RuntimeError(f"other publishers on {competing}: crisp ignores targets until they stop")
        with self._lock:
            self._errors.clear()
            self._mode = "impedance"
            self._following.reset()
            self._target = self._pose.value.copy()
            self._publish_target(self._target)

    def hold(self) -> None:
        with self._lock:
            if self._pose.value is None:
                return
            self._target = self._pose.value.copy()
            self._publish_target(self._target)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for camera in self._cameras.values():
            camera.close()
        if self._spin_thread is not None:
            self._spin_thread.join(timeout=2.0)
        try:
            self._executor.shutdown(timeout_sec=1.0)
        except Exception:
            pass
        try:
            self._node.destroy_node()
        finally:
            if self._context.ok():
                self._context.try_shutdown()
