"""``Ros2Config`` (the ROS 2 backend's topics, QoS and timing) and the lazy rclpy import."""

from __future__ import annotations

import dataclasses
from typing import Literal

from robot_servers.backends.base import ImpedanceParams
from robot_servers.franka import HOME_Q
from robot_servers.ros2.crisp import FR3_JOINTS, joint_reset_parameters
from robot_servers.ros2.network import NETWORKS


@dataclasses.dataclass(frozen=True)
class Ros2Config:
    """Topic names, frames, QoS and timing. Relative names resolve inside ``namespace``.

    The defaults match FR3 + franka_ros2 + crisp_controllers_demos (and launch/robot_server.launch.py).
    """

    namespace: str = ""
    node_name: str = "serl_robot_server"
    domain_id: int | None = None  # None: ROS_DOMAIN_ID from the environment
    network: Literal["localhost", "lan"] = "localhost"  # DDS on loopback only, or ROS's defaults (ros2/network.py)
    controller_node: str = "cartesian_impedance_controller"  # its parameters are set through its parameter services
    target_pose_topic: str = "target_pose"
    target_joint_topic: str = "target_joint"
    current_pose_topic: str = "current_pose"
    current_twist_topic: str = "current_twist"  # crisp's twist_broadcaster (EE frame); "" → pose differences
    joint_states_topic: str = "joint_states"
    wrench_topic: str = "franka_robot_state_broadcaster/external_wrench_in_base_frame"  # "" when none
    wrench_convention: Literal["franka", "environment"] = "franka"  # franka: the robot's force on the environment
    gripper_command_topic: str = "gripper/gripper_position_controller/commands"  # Float64MultiArray
    gripper_state_topic: str = "gripper/joint_states"
    gripper_normalized: bool = True  # topics carry width / 0.08 (the Franka-hand adapter); False: metres
    gripper_binary: bool = True  # the Franka hand only opens or grasps: widths below 0.04 m grasp
    frame_id: str = "base"
    joint_names: tuple[str, ...] = FR3_JOINTS
    home_q: tuple[float, ...] = HOME_Q
    qos_depth: int = 10
    command_reliability: Literal["reliable", "best_effort"] = "reliable"  # crisp subscribes reliably
    state_reliability: Literal["reliable", "best_effort"] = "best_effort"  # receives reliable and best-effort publishers
    stale_after: float = 0.1  # s without current_pose / joint_states → error + hold
    connect_timeout: float = 10.0  # s to wait for the first state
    parameter_timeout: float = 3.0  # s for a parameter call to the controller
    set_impedance_on_start: ImpedanceParams | None = None  # push these gains at start
    raise_stiffness_cap: bool = True  # raise variable_max_stiffness (within crisp's bounds) instead of refusing
    velocity_fallback_after: float = 0.5  # s without current_twist before tcp_vel comes from pose differences
    not_following_after: float = 2.0  # s a target may stay unreached by a static arm before the fault; 0 disables
    joint_reset_stiffness: float = 40.0  # Nm/rad, nullspace stiffness while resetting
    joint_reset_max_torque: float = 12.0  # Nm, nullspace.max_tau while resetting (Franka joints 5-7: 12 Nm)
    joint_reset_tolerance: float = 0.03  # rad
    cameras: tuple[str, ...] = ()  # camera specs, see robot_servers.cameras.specs (served by the robot server)
    task_cameras: tuple = ()  # the task's CameraSpecs: crops and sizes by name (devices too when `cameras` is empty)

    def __post_init__(self):
        if self.domain_id is not None and not 0 <= self.domain_id <= 232:
            raise ValueError(f"Ros2Config.domain_id: expected 0..232, got {self.domain_id}")
        if self.network not in NETWORKS:
            raise ValueError(f"Ros2Config.network: expected one of {NETWORKS}, got {self.network!r}")
        if self.stale_after <= 0:
            raise ValueError("Ros2Config.stale_after must be positive")
        if len(self.joint_names) != 7 or len(self.home_q) != 7:
            raise ValueError("Ros2Config.joint_names and home_q: expected 7 entries each")
        for name in ("command_reliability", "state_reliability"):
            if getattr(self, name) not in ("reliable", "best_effort"):
                raise ValueError(f"Ros2Config.{name}: expected 'reliable' or 'best_effort', got {getattr(self, name)!r}")
        if self.wrench_convention not in ("franka", "environment"):
            raise ValueError(f"Ros2Config.wrench_convention: expected 'franka' or 'environment', got {self.wrench_convention!r}")
        for name in ("target_pose_topic", "target_joint_topic", "current_pose_topic", "joint_states_topic"):
            if not getattr(self, name):
                raise ValueError(f"Ros2Config.{name} must not be empty")
        joint_reset_parameters(self.joint_reset_stiffness, self.joint_reset_max_torque, self.joint_names)


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
