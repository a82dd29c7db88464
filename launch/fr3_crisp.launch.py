"""Bare robot PC → running robot server: FR3 + franka_ros2 + crisp_controllers + cameras + server.

    ros2 launch launch/fr3_crisp.launch.py robot_ip:=172.16.0.2 task:=PegInsertion \\
        cameras:="realsense:wrist_1=128422270679;realsense:wrist_2=127122270572" \\
        python:=$HOME/serl/.venv/bin/python

Brings up, in order: crisp_controllers_robot_demos' ``franka.launch.py`` (franka_ros2 hardware
interface, controller_manager at 1 kHz, joint_state_broadcaster, pose_broadcaster, the Franka hand
and crisp_py's hand adapter); then switches from the joint trajectory controller to crisp's
``cartesian_impedance_controller``; then the robot server with the ROS 2 backend (robot_server.launch.py).
Needs ROS 2 Jazzy with franka_ros2 and crisp_controllers(_demos) built in the sourced workspace;
docs/real_robot.md walks through every step.
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription, TimerAction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER_ARGUMENTS = ("python", "task", "host", "port", "token", "namespace", "cameras", "stale_after",
                    "controller_node", "target_pose_topic", "current_pose_topic", "joint_states_topic", "wrench_topic",
                    "current_twist_topic")


def generate_launch_description():
    robot_ip = LaunchConfiguration("robot_ip")
    arm_id = LaunchConfiguration("arm_id")
    load_gripper = LaunchConfiguration("load_gripper")
    controller = LaunchConfiguration("controller_node")
    start_delay = LaunchConfiguration("controller_start_delay")

    arm = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([FindPackageShare("crisp_controllers_robot_demos"), "launch", "franka.launch.py"])),
        launch_arguments={"robot_ip": robot_ip, "arm_id": arm_id, "load_gripper": load_gripper,
                          "use_fake_hardware": LaunchConfiguration("use_fake_hardware")}.items(),
    )
    # franka.launch.py loads crisp's controller inactive and the joint trajectory controller active.
    activate = TimerAction(period=start_delay, actions=[ExecuteProcess(
        cmd=["ros2", "control", "switch_controllers", "--activate", controller,
             "--deactivate", "joint_trajectory_controller", "--strict"],
        output="screen")])
    server = TimerAction(period=start_delay, actions=[IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(HERE, "robot_server.launch.py")),
        launch_arguments={name: LaunchConfiguration(name) for name in SERVER_ARGUMENTS}.items(),
    )])
    return LaunchDescription([
        DeclareLaunchArgument("robot_ip", description="FCI address of the arm (Desk → Settings → Network)"),
        DeclareLaunchArgument("arm_id", default_value="fr3", description="fr3 | fer (Panda) | fp3"),
        DeclareLaunchArgument("load_gripper", default_value="true", description="Franka hand attached"),
        DeclareLaunchArgument("use_fake_hardware", default_value="false", description="ros2_control mock hardware"),
        DeclareLaunchArgument("controller_start_delay", default_value="5.0",
                              description="seconds to wait for the controller manager before switching"),
        DeclareLaunchArgument("python", default_value="python3", description="interpreter with serl-suite[ros2]"),
        DeclareLaunchArgument("task", default_value="", description="task name (safety box, cameras)"),
        DeclareLaunchArgument("host", default_value="127.0.0.1", description="HTTP bind address"),
        DeclareLaunchArgument("port", default_value="5000", description="HTTP port"),
        DeclareLaunchArgument("token", default_value="", description="bearer token"),
        DeclareLaunchArgument("namespace", default_value="", description="ROS namespace of the arm"),
        DeclareLaunchArgument("cameras", default_value="", description="camera specs separated by ';'"),
        DeclareLaunchArgument("stale_after", default_value="0.1", description="s without state → hold + error"),
        DeclareLaunchArgument("controller_node", default_value="cartesian_impedance_controller",
                              description="crisp Cartesian impedance controller name"),
        DeclareLaunchArgument("target_pose_topic", default_value="target_pose", description="controller target"),
        DeclareLaunchArgument("current_pose_topic", default_value="current_pose", description="pose_broadcaster"),
        DeclareLaunchArgument("joint_states_topic", default_value="joint_states", description="joint states"),
        DeclareLaunchArgument("current_twist_topic", default_value="current_twist",
                              description="crisp's twist_broadcaster (the demos do not start it: pose differences then)"),
        DeclareLaunchArgument("wrench_topic", default_value="franka_robot_state_broadcaster/external_wrench_in_base_frame",
                              description="franka_ros2's external wrench ('' none)"),
        arm,
        activate,
        server,
    ])
