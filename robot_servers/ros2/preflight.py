"""The ROS 2 backend's pre-flight report (``python -m robot_servers --backend ros2 --check``): what can be
known before the first motion, and the problems that would make it fail or misbehave. ``backend`` is
a ``Ros2Backend`` (not imported here: the backend imports this module).

Controller state (through controller_manager's ``list_controllers`` where ``controller_manager_msgs``
is installed, as on a ROS 2 install), topic rates, QoS of every endpoint on the backend's topics,
the controller's limits (stiffness caps, nullspace torque bound) and the gripper mode.
"""

from __future__ import annotations

import time
from typing import Any

MIN_RATES = {"current_pose": 100.0, "joint_states": 100.0}  # Hz below which the backend's staleness check would trip


def _reliability(profile) -> str:
    from rclpy.qos import ReliabilityPolicy

    return "reliable" if profile.reliability == ReliabilityPolicy.RELIABLE else "best_effort"


def controller_state(backend, timeout: float = 2.0) -> str:
    """``active``/``inactive``/… from controller_manager, or why it cannot be asked."""
    try:
        from controller_manager_msgs.srv import ListControllers
    except ImportError:
        return "unknown (controller_manager_msgs not installed: run `ros2 control list_controllers`)"
    client = backend._node.create_client(ListControllers, "/controller_manager/list_controllers")
    try:
        if not client.wait_for_service(timeout_sec=timeout):
            return "unknown (no controller_manager)"
        future = client.call_async(ListControllers.Request())
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not future.done():
            return "unknown (list_controllers timed out)"
        name = backend.config.controller_node.rsplit("/", 1)[-1]
        states = {c.name: c.state for c in future.result().controller}
        return states.get(name, "not loaded")
    finally:
        backend._node.destroy_client(client)


def topic_report(backend) -> dict[str, Any]:
    """Endpoints and QoS on each topic, and whether they match the backend's."""
    c, node = backend.config, backend._node
    state = {"current_pose": c.current_pose_topic, "joint_states": c.joint_states_topic,
             "current_twist": c.current_twist_topic, "wrench": c.wrench_topic, "gripper_state": c.gripper_state_topic}
    commands = {"target_pose": c.target_pose_topic, "target_joint": c.target_joint_topic,
                "gripper_command": c.gripper_command_topic}
    out: dict[str, Any] = {}
    for role, topic in state.items():
        if not topic:
            continue
        publishers = [(i.node_name, _reliability(i.qos_profile)) for i in node.get_publishers_info_by_topic(topic)]
        # a best-effort subscription receives reliable and best-effort publishers alike
        ok = c.state_reliability == "best_effort" or all(r == "reliable" for _, r in publishers)
        out[role] = {"topic": topic, "publishers": publishers, "qos_match": ok}
    for role, topic in commands.items():
        if not topic:
            continue
        subscribers = [(i.node_name, _reliability(i.qos_profile)) for i in node.get_subscriptions_info_by_topic(topic)]
        others = [i.node_name for i in node.get_publishers_info_by_topic(topic) if i.node_name != node.get_name()]
        ok = c.command_reliability == "reliable" or all(r == "best_effort" for _, r in subscribers)
        out[role] = {"topic": topic, "subscribers": subscribers, "other_publishers": others, "qos_match": ok}
    return out


def measure_rates(backend, window: float) -> dict[str, float]:
    """Messages per second on the state topics over ``window`` seconds."""
    slots = {"current_pose": backend._pose, "joint_states": backend._joints, "current_twist": backend._twist,
             "wrench": backend._wrench, "gripper_state": backend._gripper}
    before = {k: s.count for k, s in slots.items()}
    time.sleep(window)
    return {k: (s.count - before[k]) / window for k, s in slots.items()}


def preflight(backend, window: float = 1.0) -> dict[str, Any]:
    """The report; ``problems`` lists what must be fixed before the first motion."""
    from robot_servers.ros2 import crisp, network

    c = backend.config
    problems: list[str] = []
    report: dict[str, Any] = {"backend": "ros2", "controller": c.controller_node}
    report["controller_state"] = state = controller_state(backend)
    if not state.startswith("unknown") and state != "active":
        problems.append(f"{c.controller_node} is {state}: activate it (ros2 control switch_controllers --activate ...)")
    report["topics"] = topics = topic_report(backend)
    for entry in topics.values():
        if not entry["qos_match"]:
            problems.append(f"QoS mismatch on {entry['topic']}")
        if entry.get("other_publishers"):
            problems.append(f"other publishers on {entry['topic']}: {entry['other_publishers']} (crisp ignores targets)")
    if not topics["target_pose"]["subscribers"]:
        problems.append(f"nothing subscribes {c.target_pose_topic}: is {c.controller_node} loaded?")
    report["rates_hz"] = rates = measure_rates(backend, window)
    for role, minimum in MIN_RATES.items():
        if rates[role] < minimum:
            problems.append(f"{role} at {rates[role]:.0f} Hz (expected >= {minimum:.0f})")
    names = [crisp.CAP_TRANSLATIONAL, crisp.CAP_ROTATIONAL, "nullspace.max_tau", "nullspace.damping"]
    try:
        report["limits"] = backend._get_parameters(names)
        report["applied_impedance"] = backend.impedance().to_dict()
    except (RuntimeError, ValueError) as exc:
        problems.append(f"controller parameters unavailable: {exc}")
    report["gripper"] = {"binary": c.gripper_binary, "normalized": c.gripper_normalized,
                         "command_topic": c.gripper_command_topic}
    state_now = backend.state()
    report["velocity_source"] = state_now.velocity_source
    report["wrench_convention"] = c.wrench_convention
    report["dds"] = {"network": c.network, **network.summary()}
    report["warnings"] = state_now.warnings
    problems.extend(state_now.errors)
    report["problems"] = problems
    return report
