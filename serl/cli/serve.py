"""``serl serve``: the robot server (twin, ROS 2 or libfranka backend) over HTTP; same as ``python -m robot_servers``."""

from robot_servers.server import ServeConfig, serve

__all__ = ["ServeConfig", "serve"]
