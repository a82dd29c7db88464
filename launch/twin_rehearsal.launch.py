"""Rehearse the real-robot setup without a robot: the MuJoCo twin behind crisp's ROS 2 topics and
parameters (robot_servers.ros2.twin_node), plus the robot server with the ROS 2 backend.

    ros2 launch launch/twin_rehearsal.launch.py python:=$HOME/serl/.venv/bin/python

Everything the real setup exercises (DDS, topic names and QoS, crisp's parameters and stiffness caps,
franka_ros2's wrench topic, the Franka-hand adapter, stale-state detection, the HTTP API) runs here
with the server's real-arm defaults; only the arm is simulated. Without a ROS install, start the same two
processes by hand: ``python -m robot_servers.ros2.twin_node`` and
``python -m robot_servers --backend ros2``.
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription, TimerAction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

HERE = os.path.dirname(os.path.abspath(__file__))


def generate_launch_description():
    python = LaunchConfiguration("python")
    twin = ExecuteProcess(
        cmd=[python, "-m", "robot_servers.ros2.twin_node", "--robot", LaunchConfiguration("robot"),
             "--scene", LaunchConfiguration("scene")],
        name="twin_node", output="screen")
    server = TimerAction(period=3.0, actions=[IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(HERE, "robot_server.launch.py")),
        launch_arguments={"python": python, "port": LaunchConfiguration("port"),
                          "task": LaunchConfiguration("task")}.items())])  # the real arm's defaults, unchanged
    return LaunchDescription([
        DeclareLaunchArgument("python", default_value="python3", description="interpreter with serl-suite[ros2,sim]"),
        DeclareLaunchArgument("robot", default_value="fr3", description="fr3 | panda"),
        DeclareLaunchArgument("scene", default_value="empty", description="twin scene: empty | pick_cube | peg_insertion"),
        DeclareLaunchArgument("task", default_value="", description="task name for the safety box"),
        DeclareLaunchArgument("port", default_value="5000", description="HTTP port"),
        twin,
        server,
    ])
