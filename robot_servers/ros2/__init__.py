"""ROS 2 side of the robot server: crisp_controllers parameter names, message conversion, and a
node that puts the MuJoCo twin behind crisp's topics (``python -m robot_servers.ros2.twin_node``).

Nothing here imports rclpy at package import time; ``messages`` and ``twin_node`` need the ``ros2`` extra.
"""
