"""Robot server with the ROS 2 backend (crisp_controllers' topics and parameters).

    ros2 launch launch/robot_server.launch.py task:=PegInsertion python:=$HOME/serl/.venv/bin/python

Runs ``python -m examples.serve`` (``python -m robot_servers`` plus the example tasks) from the repository root.

Run it on the robot PC next to franka_ros2 + crisp_controllers (see fr3_crisp.launch.py, which
includes this file), or, with the server's ``--option network=lan`` (its DDS is loopback-only by default), on
any machine in the same ROS_DOMAIN_ID. Every topic name is an argument;
the defaults are ``Ros2Config``'s (FR3 + franka_ros2 + crisp_controllers_demos).
"""

import os
import shlex

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction, LogInfo
from launch.substitutions import LaunchConfiguration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # examples.serve runs from the repository root

ARGUMENTS = {
    "python": ("python3", "Python interpreter of the environment where serl-suite[ros2] is installed"),
    "task": ("", "task name for the safety box and cameras (empty: no safety box - not for real use)"),
    "host": ("127.0.0.1", "address the HTTP server binds; 0.0.0.0 exposes the robot to the network (use a token)"),
    "port": ("5000", "HTTP port"),
    "token": ("", "bearer token required by every request (or set SERL_ROBOT_TOKEN)"),
    "namespace": ("", "ROS namespace of the arm's controllers and topics"),
    "controller_node": ("cartesian_impedance_controller", "crisp controller whose parameters set the impedance"),
    "target_pose_topic": ("target_pose", "PoseStamped the controller tracks"),
    "target_joint_topic": ("target_joint", "JointState: nullspace posture of the controller"),
    "current_pose_topic": ("current_pose", "PoseStamped from crisp's pose_broadcaster"),
    "current_twist_topic": ("current_twist", "TwistStamped from crisp's twist_broadcaster ('' if none)"),
    "joint_states_topic": ("joint_states", "JointState from the joint_state_broadcaster"),
    "wrench_topic": ("franka_robot_state_broadcaster/external_wrench_in_base_frame",
                     "franka_ros2's best-effort WrenchStamped (Franka's sign, turned into the project's) ('' if none)"),
    "gripper_command_topic": ("gripper/gripper_position_controller/commands", "Float64MultiArray gripper command"),
    "gripper_state_topic": ("gripper/joint_states", "JointState gripper state"),
    "gripper_normalized": ("true", "gripper topics carry width/0.08 (the Franka-hand adapter of crisp_controllers_demos)"),
    "gripper_binary": ("true", "the gripper only opens or grasps (Franka hand); false for a continuous gripper"),
    "frame_id": ("base", "frame of target and measured poses"),
    "stale_after": ("0.1", "seconds without state before the server holds and reports an error"),
    "cameras": ("", "camera specs separated by ';', e.g. realsense:wrist_1=SERIAL;realsense:wrist_2=SERIAL"),
    "watchdog_timeout": ("0.5", "seconds without a command before the arm holds its pose"),
}

STRING_OPTIONS = ("namespace", "controller_node", "target_pose_topic", "target_joint_topic", "current_pose_topic",
                  "current_twist_topic", "joint_states_topic", "wrench_topic", "gripper_command_topic",
                  "gripper_state_topic", "frame_id")


def server_command(values: dict) -> list:
    """The ``python -m examples.serve`` command line (robot server + example tasks) for resolved arguments."""
    command = [values["python"], "-m", "examples.serve", "--backend", "ros2", "--host", values["host"],
               "--port", values["port"], "--watchdog-timeout", values["watchdog_timeout"]]
    if values["task"]:
        command += ["--task", values["task"]]
    options = [f"{name}={values[name]}" for name in STRING_OPTIONS]
    options.append(f"gripper_normalized={values['gripper_normalized'].lower()}")
    options.append(f"gripper_binary={values['gripper_binary'].lower()}")
    options.append(f"stale_after={values['stale_after']}")
    specs = [s for s in values["cameras"].split(";") if s]
    if specs:
        options.append("cameras=[" + ",".join(f'"{s}"' for s in specs) + "]")
    return command + ["--option", *options]


def _server(context):
    values = {name: context.perform_substitution(LaunchConfiguration(name)) for name in ARGUMENTS}
    command = server_command(values)
    env = {"PYTHONUNBUFFERED": "1"}
    if values["token"]:
        env["SERL_ROBOT_TOKEN"] = values["token"]  # not on the command line, where `ps` would show it
    return [LogInfo(msg="robot server: " + shlex.join(command)),
            ExecuteProcess(cmd=command, name="serl_robot_server", output="screen", additional_env=env, cwd=REPO)]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text) for name, (default, text) in ARGUMENTS.items()]
        + [OpaqueFunction(function=_server)]
    )
