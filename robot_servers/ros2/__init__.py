"""ROS 2 side of the robot server: crisp_controllers' parameters and their semantics (``crisp``), the
backend's config (``config``), message conversion (``messages``), derived state and faults (``monitor``),
which network DDS may use (``network``: loopback only unless opened),
parameter calls (``parameters``), the pre-flight report (``preflight``), and a node that puts the MuJoCo
twin behind the FR3 stack's topics (``python -m robot_servers.ros2.twin_node``).

Nothing here imports rclpy at package import time; ``messages``, ``parameters`` and ``twin_node`` need
the ``ros2`` extra.
"""
