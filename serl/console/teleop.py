"""The browser page as a teleop device: its input reaches the ``InterventionWrapper`` like a SpaceMouse's."""

from __future__ import annotations

from serl.console.hub import ConsoleHub
from serl.devices.base import Teleop, TeleopCommand


class BrowserTeleop(Teleop):
    """``read()`` is the hub's fresh browser input, or idle (no page holds the teleop, or its input went stale:
    the policy acts again after the hub's ``teleop_timeout_s``)."""

    def __init__(self, hub: ConsoleHub):
        self.hub = hub

    def read(self) -> TeleopCommand:
        command = self.hub.teleop_command()
        return TeleopCommand.idle() if command is None else command
