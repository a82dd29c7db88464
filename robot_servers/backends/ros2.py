"""``Ros2Backend``: a Franka arm behind ROS 2 with crisp_controllers' Cartesian impedance controller.

Commands go out as crisp takes them: the equilibrium pose as ``PoseStamped`` on ``target_pose``,
the nullspace posture as ``JointState`` on ``target_joint``; stiffness, damping and error clip are
the controller's live ROS parameters (``task.k_pos_x`` …, see ``robot_servers.ros2.crisp``).
State comes from ``current_pose``, ``current_twist``, ``joint_states`` and a wrench topic.
A state older than ``stale_after`` or a malformed message latches an error and holds the last
measured pose until ``recover()``. rclpy is imported lazily (extra ``ros2``) and runs in its own
context and executor thread, so several backends (and a twin node) can share one process.

Joint reset uses only crisp's interface: task stiffness to zero, nullspace projector ``none`` (the
nullspace term becomes a joint impedance law), ``target_joint`` = q, then the old parameters back.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Literal

import numpy as np

from robot_servers.backends.base import Backend, ImpedanceParams, RobotState
from robot_servers.franka import HOME_Q
from robot_servers.limits import MAX_GRIPPER_WIDTH, validate_gripper, validate_pose
from robot_servers.cameras.specs import camera_errors, open_task_cameras

log = logging.getLogger(__name__)

FR3_JOINTS = tuple(f"fr3_joint{i}" for i in range(1, 8))


@dataclasses.dataclass(frozen=True)
class Ros2Config:
    """Topic names, frames, QoS and timing. Relative names resolve inside ``namespace``."""

    namespace: str = ""
    node_name: str = "serl_robot_server"
    domain_id: int | None = None  # None: ROS_DOMAIN_ID from the environment
    controller_node: str = "cartesian_impedance_controller"  # its parameters are set through its parameter services
    target_pose_topic: str = "target_pose"
    target_joint_topic: str = "target_joint"
    current_pose_topic: str = "current_pose"
    current_twist_topic: str = "current_twist"  # "" when nothing publishes it: velocity then reads zero
    joint_states_topic: str = "joint_states"
    wrench_topic: str = "external_wrench"  # "" when the arm has no wrench estimate
    gripper_command_topic: str = "gripper/command"  # std_msgs/Float64MultiArray [width m]
    gripper_state_topic: str = "gripper/joint_states"  # finger positions; width = their sum
    gripper_normalized: bool = False  # crisp_py's hand adapter: command and state as width / 0.08 in [0, 1]
    frame_id: str = "base"
    joint_names: tuple[str, ...] = FR3_JOINTS
    home_q: tuple[float, ...] = HOME_Q
    qos_depth: int = 10
    qos_reliability: Literal["reliable", "best_effort"] = "reliable"
    stale_after: float = 0.1  # s without current_pose / joint_states → error + hold
    connect_timeout: float = 10.0  # s to wait for the first state
    parameter_timeout: float = 3.0  # s for a parameter call to the controller
    set_impedance_on_start: ImpedanceParams | None = None  # push these gains at start
    joint_reset_stiffness: float = 40.0  # Nm/rad, nullspace stiffness while resetting
    joint_reset_max_torque: float = 40.0  # Nm, nullspace.max_tau while resetting
    joint_reset_tolerance: float = 0.03  # rad
    cameras: tuple[str, ...] = ()  # camera specs, see robot_servers.cameras.specs (served by the robot server)
    task_cameras: tuple = ()  # the task's CameraSpecs: crops and sizes by name (devices too when `cameras` is empty)

    def __post_init__(self):
        if self.domain_id is not None and not 0 <= self.domain_id <= 232:
            raise ValueError(f"Ros2Config.domain_id: expected 0..232, got {self.domain_id}")
        if self.stale_after <= 0:
            raise ValueError("Ros2Config.stale_after must be positive")
        if len(self.joint_names) != 7 or len(self.home_q) != 7:
            raise ValueError("Ros2Config.joint_names and home_q: expected 7 entries each")
        if self.qos_reliability not in ("reliable", "best_effort"):
            raise ValueError(f"Ros2Config.qos_reliability: expected 'reliable' or 'best_effort', got {self.qos_reliability!r}")
        for name in ("target_pose_topic", "target_joint_topic", "current_pose_topic", "joint_states_topic"):
            if not getattr(self, name):
                raise ValueError(f"Ros2Config.{name} must not be empty")


def import_rclpy():
    """rclpy and its message packages, or ImportError naming the extra."""
    try:
        import rclpy  # noqa: F401
        import rclpy.executors  # noqa: F401
        import rclpy.parameter_client  # noqa: F401
        from geometry_msgs.msg import PoseStamped  # noqa: F401
        from sensor_msgs.msg import JointState  # noqa: F401
        from std_msgs.msg import Float64MultiArray  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"the ROS 2 backend needs rclpy ({exc}): pip install 'serl-suite[ros2]'") from exc
    return rclpy


class _Latest:
    """The newest message of one topic and when it arrived (monotonic seconds)."""

    __slots__ = ("value", "received")

    def __init__(self):
        self.value = None
        self.received = 0.0


class Ros2Backend(Backend):
    """Cartesian impedance through crisp_controllers' topics and parameters."""

    name = "ros2"

    def __init__(self, config: Ros2Config = Ros2Config(), **overrides):
        if overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config
        rclpy = import_rclpy()
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter_client import AsyncParameterClient
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from geometry_msgs.msg import PoseStamped, TwistStamped, WrenchStamped
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray

        from robot_servers.ros2 import messages

        self._messages = messages
        self._Float64MultiArray = Float64MultiArray
        self._lock = threading.RLock()
        self._errors: list[str] = []
        self._mode = "impedance"
        self._closed = False
        self._pose, self._twist, self._joints, self._wrench, self._gripper = (_Latest() for _ in range(5))
        self._target: np.ndarray | None = None
        self._messages_received = 0
        self._cameras: dict = {}

        self._context = rclpy.Context()
        self._context.init(domain_id=config.domain_id)
        self._node = rclpy.create_node(config.node_name, namespace=config.namespace or None, context=self._context)
        reliability = ReliabilityPolicy.RELIABLE if config.qos_reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
        qos = QoSProfile(depth=config.qos_depth, reliability=reliability)
        node = self._node
        self._pose_pub = node.create_publisher(PoseStamped, config.target_pose_topic, qos)
        self._joint_pub = node.create_publisher(JointState, config.target_joint_topic, qos)
        self._gripper_pub = node.create_publisher(Float64MultiArray, config.gripper_command_topic, qos) \
            if config.gripper_command_topic else None
        node.create_subscription(PoseStamped, config.current_pose_topic, self._on_pose, qos)
        node.create_subscription(JointState, config.joint_states_topic, self._on_joints, qos)
        if config.current_twist_topic:
            node.create_subscription(TwistStamped, config.current_twist_topic, self._on_twist, qos)
        if config.wrench_topic:
            node.create_subscription(WrenchStamped, config.wrench_topic, self._on_wrench, qos)
        if config.gripper_state_topic:
            node.create_subscription(JointState, config.gripper_state_topic, self._on_gripper, qos)
        self._parameters = AsyncParameterClient(node, config.controller_node)
        self._watchdog = node.create_timer(min(config.stale_after / 4, 0.02), self._check_stale)

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

    def _store(self, slot: _Latest, value, topic: str) -> None:
        if value is None:
            self._flag(f"malformed message on {topic} (non-finite or wrong shape); holding")
            self._hold_locked()
            return
        with self._lock:
            slot.value = value
            slot.received = time.monotonic()
            self._messages_received += 1

    def _on_pose(self, msg) -> None:
        self._store(self._pose, self._messages.read_pose(msg), self.config.current_pose_topic)

    def _on_twist(self, msg) -> None:
        self._store(self._twist, self._messages.read_twist(msg), self.config.current_twist_topic)

    def _on_wrench(self, msg) -> None:
        self._store(self._wrench, self._messages.read_wrench(msg), self.config.wrench_topic)

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
        if self._pose.value is None:
            return
        for topic, age in self._ages().items():
            if age > self.config.stale_after:
                if not any(e.startswith("stale state") for e in self._errors):
                    self._flag(f"stale state: no {topic} for more than {1000 * self.config.stale_after:.0f} ms")
                    self._hold_locked()
                return

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
            f"within {timeout} s (domain {self.config.domain_id}, namespace {self.config.namespace!r})")

    def _publish_target(self, pose: np.ndarray) -> None:
        now = self._node.get_clock().now().nanoseconds * 1e-9
        self._pose_pub.publish(self._messages.pose_msg(pose, self.config.frame_id, now))

    # -- parameters -----------------------------------------------------------------------

    def _set_parameters(self, values: dict[str, object]) -> None:
        from rclpy.parameter import Parameter

        if not self._parameters.wait_for_services(timeout_sec=self.config.parameter_timeout):
            raise RuntimeError(f"controller {self.config.controller_node!r} offers no parameter services")
        future = self._parameters.set_parameters([Parameter(k, value=v) for k, v in values.items()])
        deadline = time.monotonic() + self.config.parameter_timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.002)
        if not future.done():
            future.cancel()
            raise RuntimeError(f"controller {self.config.controller_node!r}: set_parameters timed out")
        rejected = [(name, r.reason) for name, r in zip(values, future.result().results) if not r.successful]
        if rejected:
            raise ValueError(f"controller rejected parameters: {rejected}")

    def _get_parameters(self, names: list[str]) -> dict[str, object]:
        from rclpy.parameter import parameter_value_to_python

        if not self._parameters.wait_for_services(timeout_sec=self.config.parameter_timeout):
            raise RuntimeError(f"controller {self.config.controller_node!r} offers no parameter services")
        future = self._parameters.get_parameters(names)
        deadline = time.monotonic() + self.config.parameter_timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.002)
        if not future.done():
            raise RuntimeError(f"controller {self.config.controller_node!r}: get_parameters timed out")
        return {n: parameter_value_to_python(v) for n, v in zip(names, future.result().values)}

    # -- Backend --------------------------------------------------------------------------

    def state(self) -> RobotState:
        with self._lock:
            if self._pose.value is None or self._joints.value is None:
                raise RuntimeError("ros2 backend has no state yet")
            self._check_stale()  # a reader never sees a stale state that is not yet latched
            errors = list(self._errors) + camera_errors(self._cameras)
            q, dq = self._joints.value
            return RobotState(
                tcp_pose=self._pose.value.copy(),
                tcp_vel=np.zeros(6) if self._twist.value is None else self._twist.value.copy(),
                wrench=np.zeros(6) if self._wrench.value is None else self._wrench.value.copy(),
                q=q.copy(),
                dq=dq.copy(),
                gripper_width=0.0 if self._gripper.value is None else float(self._gripper.value),
                target_pose=self._target.copy(),
                controller_mode=self._mode,
                errors=errors,
                timestamp=self._pose.received,
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

    def set_gripper(self, width) -> None:
        width = validate_gripper(width, "width")
        if self._gripper_pub is None:
            raise RuntimeError("ros2 backend has no gripper_command_topic configured")
        command = width / MAX_GRIPPER_WIDTH if self.config.gripper_normalized else width
        self._gripper_pub.publish(self._Float64MultiArray(data=[command]))

    def set_impedance(self, params: ImpedanceParams) -> None:
        from robot_servers.ros2.crisp import impedance_to_parameters

        self._set_parameters(impedance_to_parameters(params))

    def set_nullspace_target(self, q) -> None:
        """Preferred joint posture for the controller's nullspace term (``target_joint``)."""
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (7,) or not np.all(np.isfinite(q)):
            raise ValueError(f"q: expected 7 finite joint angles, got {q.tolist()}")
        now = self._node.get_clock().now().nanoseconds * 1e-9
        self._joint_pub.publish(self._messages.joint_msg(self.config.joint_names, q, seconds=now))

    def joint_reset(self, q=None, duration: float = 3.0) -> None:
        target = np.asarray(self.config.home_q if q is None else q, dtype=np.float64)
        if target.shape != (7,) or not np.all(np.isfinite(target)):
            raise ValueError(f"q: expected 7 finite joint angles, got {np.asarray(q).tolist()}")
        with self._lock:
            if self._errors:
                raise RuntimeError(f"ros2 backend has errors {self._errors}; call recover() first")
        names = [n for n in (*(f"task.k_pos_{a}" for a in "xyz"), *(f"task.k_rot_{a}" for a in "xyz"),
                             "nullspace.stiffness", "nullspace.projector_type", "nullspace.max_tau")]
        saved = self._get_parameters(names)
        self._mode = "joint"
        try:
            self.set_nullspace_target(target)
            self._set_parameters({
                **{n: 0.0 for n in names[:6]},
                "nullspace.stiffness": self.config.joint_reset_stiffness,
                "nullspace.projector_type": "none",
                "nullspace.max_tau": self.config.joint_reset_max_torque,
            })
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
            self._set_parameters(saved)
            with self._lock:
                self._mode = "impedance" if not self._errors else "hold"
        if self._errors:
            raise RuntimeError(f"joint reset failed: {self._errors}")

    def recover(self) -> None:
        deadline = time.monotonic() + max(1.0, 10 * self.config.stale_after)
        while any(a > self.config.stale_after for a in self._ages().values()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"ros2 backend: state still stale ({self._ages()}); is the controller running?")
            time.sleep(0.01)
        with self._lock:
            self._errors.clear()
            self._mode = "impedance"
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
        if hasattr(self, "_spin_thread"):
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
