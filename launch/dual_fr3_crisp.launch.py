"""Two FR3s → two robot servers, one per arm: the pair ``DualFrankaEnv`` drives.

    ros2 launch launch/dual_fr3_crisp.launch.py left_robot_ip:=172.16.1.2 right_robot_ip:=172.16.0.2 \\
        left_task:=HandoverLeft right_task:=HandoverRight python:=$HOME/serl/.venv/bin/python

Brings up crisp_controllers_robot_demos' ``dual_franka.launch.py`` (each arm's franka_ros2 hardware interface and
controllers in its own namespace, ``left`` and ``right``); then, in each namespace, switches from the joint
trajectory controller to crisp's ``cartesian_impedance_controller``; then one robot server per arm
(robot_server.launch.py with that namespace), on ``left_port`` and ``right_port``. Each server has its own task
(safety box, cameras), guard and watchdog, so every single-arm guarantee holds per arm. Two servers do not see each
other's arm: keep the safety boxes apart, or serve both arms from one process (``serl serve --arms left right``),
whose guards keep the hands apart (docs/env.md, "Two arms").
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription, TimerAction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

HERE = os.path.dirname(os.path.abspath(__file__))
ARMS = ("left", "right")
PER_ARM = {  # name -> (left default, right default, description)
    "task": ("", "", "task name for this arm's safety box and cameras"),
    "port": ("5000", "5001", "HTTP port of this arm's robot server"),
    "cameras": ("", "", "this arm's camera specs separated by ';'"),
    "frame_id": ("base", "base", "frame of this arm's target and measured poses (see current_pose's header)"),
}
SHARED = {
    "python": ("python3", "interpreter with serl-suite[ros2]"),
    "host": ("127.0.0.1", "HTTP bind address of both servers"),
    "token": ("", "bearer token of both servers"),
    "controller_node": ("cartesian_impedance_controller", "crisp Cartesian impedance controller name"),
    "stale_after": ("0.1", "s without state → hold + error"),
    "watchdog_timeout": ("0.5", "seconds without a command before an arm holds its pose"),
}


def generate_launch_description():
    start_delay = LaunchConfiguration("controller_start_delay")
    arms = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([FindPackageShare("crisp_controllers_robot_demos"), "launch", "dual_franka.launch.py"])),
        launch_arguments={"left_robot_ip": LaunchConfiguration("left_robot_ip"),
                          "right_robot_ip": LaunchConfiguration("right_robot_ip"),
                          "use_fake_hardware": LaunchConfiguration("use_fake_hardware")}.items(),
    )
    actions = []
    for arm in ARMS:
        # dual_franka.launch.py loads crisp's controller inactive and the joint trajectory controller active
        activate = ExecuteProcess(
            cmd=["ros2", "control", "switch_controllers", "--controller-manager", f"/{arm}/controller_manager",
                 "--activate", LaunchConfiguration("controller_node"), "--deactivate", "joint_trajectory_controller",
                 "--strict"],
            output="screen")
        values = {name: LaunchConfiguration(name) for name in SHARED}
        values.update({name: LaunchConfiguration(f"{arm}_{name}") for name in PER_ARM})
        values["namespace"] = arm
        server = IncludeLaunchDescription(
            PythonLaunchDescriptionSource(os.path.join(HERE, "robot_server.launch.py")),
            launch_arguments=values.items(),
        )
        actions.append(TimerAction(period=start_delay, actions=[activate, server]))
    declared = [
        DeclareLaunchArgument("left_robot_ip", default_value="172.16.1.2", description="FCI address of the left arm"),
        DeclareLaunchArgument("right_robot_ip", default_value="172.16.0.2", description="FCI address of the right arm"),
        DeclareLaunchArgument("use_fake_hardware", default_value="false", description="ros2_control mock hardware"),
        DeclareLaunchArgument("controller_start_delay", default_value="5.0",
                              description="seconds to wait for the controller managers before switching"),
    ]
    for name, (default, text) in SHARED.items():
        declared.append(DeclareLaunchArgument(name, default_value=default, description=text))
    for name, (left, right, text) in PER_ARM.items():
        declared.append(DeclareLaunchArgument(f"left_{name}", default_value=left, description=f"left arm: {text}"))
        declared.append(DeclareLaunchArgument(f"right_{name}", default_value=right, description=f"right arm: {text}"))
    return LaunchDescription([*declared, arms, *actions])
