"""Stand-in action types: a real action type so rclpy can build the (never used) clients."""

from test_msgs.action import Fibonacci as FollowJointTrajectory  # noqa: F401
from test_msgs.action import Fibonacci as GripperCommand  # noqa: F401
