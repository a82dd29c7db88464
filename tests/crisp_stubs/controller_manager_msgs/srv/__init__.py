"""Stand-in service types: a real service type so rclpy can build the (never called) clients."""

from std_srvs.srv import Trigger as ConfigureController  # noqa: F401
from std_srvs.srv import Trigger as ListControllers  # noqa: F401
from std_srvs.srv import Trigger as LoadController  # noqa: F401
from std_srvs.srv import Trigger as SwitchController  # noqa: F401
