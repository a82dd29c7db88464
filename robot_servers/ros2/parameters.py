"""Blocking get/set of a ROS 2 node's parameters (the crisp controller's gains) from any thread
while an executor spins the client node elsewhere."""

from __future__ import annotations

import time


class ControllerParameters:
    """The parameter services of one node, with a timeout per call."""

    def __init__(self, node, controller: str, timeout: float):
        from rclpy.parameter_client import AsyncParameterClient

        self.controller, self.timeout = controller, timeout
        self._client = AsyncParameterClient(node, controller)

    def _ready(self) -> None:
        if not self._client.wait_for_services(timeout_sec=self.timeout):
            raise RuntimeError(f"controller {self.controller!r} offers no parameter services")

    def _wait(self, future, what: str):
        deadline = time.monotonic() + self.timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.002)
        if not future.done():
            future.cancel()
            raise RuntimeError(f"controller {self.controller!r}: {what} timed out")
        return future.result()

    def set(self, values: dict[str, object]) -> None:
        """Set in the given order (the node applies them one by one); ValueError lists what it rejected."""
        from rclpy.parameter import Parameter

        self._ready()
        result = self._wait(self._client.set_parameters([Parameter(k, value=v) for k, v in values.items()]),
                            "set_parameters")
        rejected = [(name, r.reason) for name, r in zip(values, result.results) if not r.successful]
        if rejected:
            raise ValueError(f"controller rejected parameters: {rejected}")

    def get(self, names: list[str]) -> dict[str, object]:
        """Current values (None for a parameter the node does not declare)."""
        from rclpy.parameter import parameter_value_to_python

        self._ready()
        result = self._wait(self._client.get_parameters(names), "get_parameters")
        return {n: parameter_value_to_python(v) for n, v in zip(names, result.values)}
