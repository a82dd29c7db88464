"""The env-side ``RobotClient`` interface and ``LocalRobot`` (a Backend in the same process).

``HttpRobotClient`` (serl/envs/http_client.py) speaks the robot server's HTTP API with the same methods.
"""

from __future__ import annotations

import abc
import time
from typing import Mapping

import numpy as np

from robot_servers.backends.base import Backend, ImpedanceParams, RobotState
from robot_servers.cameras.base import Camera
from robot_servers.guard import GuardConfig, RobotGuard


class RobotClient(abc.ABC):
    """What FrankaEnv needs from a robot: the Backend calls plus camera frames and a clock.

    ``lockstep`` clients simulate time: the env calls ``advance(seconds)`` instead of sleeping, so
    a twin runs as fast as the CPU allows and two runs with the same seed are identical.
    """

    lockstep: bool = False
    # The simulation a lockstep client advances (two arms in one world share it); None in real time.
    simulation: object | None = None
    # True when ``step(wait=...)`` waits on the robot side, so a real-time env step is one round trip;
    # otherwise the env sleeps on its own clock between ``set_target`` and the observation.
    waits_remotely: bool = False
    # Two arms served by one process (or guarded in this one): {"id": the pair, "arm": this arm's name}, and then
    # ``set_targets`` sets both arms' targets back to back; None otherwise.
    pair: dict | None = None

    @abc.abstractmethod
    def state(self) -> RobotState: ...

    @abc.abstractmethod
    def set_target(self, pose: np.ndarray, gripper: float | None = None) -> None: ...

    @abc.abstractmethod
    def set_gripper(self, width: float) -> None: ...

    @abc.abstractmethod
    def set_impedance(self, params: ImpedanceParams) -> None: ...

    @abc.abstractmethod
    def joint_reset(self, q: np.ndarray | None = None, duration: float = 3.0) -> None: ...

    @abc.abstractmethod
    def recover(self) -> None: ...

    @abc.abstractmethod
    def images(self) -> dict[str, tuple[np.ndarray, float]]:
        """Newest frame and timestamp of every camera."""

    def observe(self) -> tuple[RobotState, dict[str, tuple[np.ndarray, float]]]:
        """State and every camera's newest frame (one round trip where the client can)."""
        return self.state(), self.images()

    def step(self, pose=None, gripper: float | None = None, advance: float | None = None,
             images: bool = True, wait: float | None = None,
             scene: bool = False) -> tuple[RobotState, dict[str, tuple[np.ndarray, float]]]:
        """Target (optional), then ``advance`` (lockstep) or ``wait`` seconds (real time), then observe.

        One round trip where the client can. ``scene=True`` asks for the ground-truth scene of the
        same instant, which ``scene()`` then returns until the next command.
        """
        if pose is not None:
            self.set_target(pose, gripper)
        elif gripper is not None:
            self.set_gripper(gripper)
        if advance is not None:
            self.advance(advance)
        if wait:
            time.sleep(wait)
        return self.state(), (self.images() if images else {})

    def advance(self, seconds: float) -> None:
        """Lockstep clients: run the simulation forward. Real-time clients: not supported."""
        raise NotImplementedError(f"{type(self).__name__} runs in real time; the env keeps the period itself")

    def scene(self) -> dict[str, np.ndarray]:
        """Ground-truth object poses (twin only)."""
        raise NotImplementedError(f"{type(self).__name__} has no ground-truth scene")

    def reset_scene(self, seed: int | None = None) -> None:
        """Put task objects back at a random pose (twin only)."""
        raise NotImplementedError(f"{type(self).__name__} cannot reset the scene")

    def reset_robot(self, q: np.ndarray | None = None) -> None:
        """Put the arm at rest at ``q`` (home when None) instantly (twin only: reproducible resets)."""
        raise NotImplementedError(f"{type(self).__name__} cannot teleport the arm; use joint_reset")

    @abc.abstractmethod
    def safety_stop(self, reason: str) -> None:
        """Latch the robot's safety stop (hold, refuse commands until ``recover``), as the guard's measured-pose
        check does."""

    def set_targets(self, targets: Mapping[str, tuple[np.ndarray, float | None]]) -> float:
        """Both arms of ``pair``: each arm's (pose, gripper) by its name, set back to back; returns the seconds
        between the two."""
        raise NotImplementedError(f"{type(self).__name__} serves one arm; set each arm's target on its client")

    def reconnect(self) -> None:
        """Re-open the connection after a failure; the env calls it on the reset after an error."""

    def close(self) -> None:
        """Release connections. Idempotent."""


class LocalRobot(RobotClient):
    """A Backend (and its cameras) in the env's own process, behind the same ``RobotGuard`` as the server.

    Sim training and tests run exactly the checks the real arm gets: validation, the safety box,
    the measured-pose stop, and (real-time backends) the watchdog. Refusals raise the guard's errors.
    """

    def __init__(self, backend: Backend, cameras: Mapping[str, Camera] | None = None,
                 guard: GuardConfig = GuardConfig()):
        self.backend = backend
        self.cameras = dict(cameras or {})
        self.guard = RobotGuard(backend, guard)
        self.lockstep = backend.lockstep
        self.simulation = getattr(backend, "world", backend) if backend.lockstep else None
        self.pair = self.guard.health()["pair"]
        self.guard.start()

    def state(self) -> RobotState:
        return self.guard.state()

    def set_target(self, pose, gripper=None) -> None:
        self.guard.set_target(pose, gripper)

    def set_targets(self, targets) -> float:
        if self.guard.config.paired is None:
            return super().set_targets(targets)
        return self.guard.config.paired.pair.set_targets(targets)["skew_s"]

    def set_gripper(self, width) -> None:
        self.guard.set_gripper(width)

    def set_impedance(self, params) -> None:
        self.guard.set_impedance(params)

    def joint_reset(self, q=None, duration=3.0) -> None:
        self.guard.joint_reset(q, duration)

    def recover(self) -> None:
        self.guard.recover()

    def safety_stop(self, reason: str) -> None:
        self.guard.latch_safety_stop(reason)

    def images(self) -> dict[str, tuple[np.ndarray, float]]:
        return {name: camera.read() for name, camera in self.cameras.items()}

    def advance(self, seconds: float) -> None:
        if not self.lockstep:
            return super().advance(seconds)
        self.guard.advance(seconds)

    def scene(self) -> dict[str, np.ndarray]:
        return self.guard.scene()

    def reset_scene(self, seed=None) -> None:
        self.guard.reset_scene(seed)

    def reset_robot(self, q=None) -> None:
        self.guard.reset_robot(q)

    def close(self) -> None:
        self.guard.stop()
        for camera in self.cameras.values():
            camera.close()
        self.backend.close()
