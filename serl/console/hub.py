"""The meeting point of the actor loop and the console server: the newest step, the learner's status, the
page's commands and the browser teleop input. Thread-safe; no I/O."""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Any

import numpy as np

from serl.devices.base import TeleopCommand

COMMANDS = ("pause", "resume", "end_episode", "mark_success", "mark_failure", "discard", "safety_stop", "recover")


@dataclasses.dataclass
class ArmView:
    """What the page shows of one arm at one step."""

    tcp_pose: list[float] | None = None  # x, y, z, qx, qy, qz, qw, in the arm's base frame
    target_pose: list[float] | None = None
    gripper: float | None = None
    guard: dict[str, Any] = dataclasses.field(default_factory=dict)  # the arm's health: watchdog, safety stop
    safety_box: dict[str, list[float]] | None = None  # {"low": [x, y, z], "high": [x, y, z]}


ONE_ARM = "robot"
"""The key of ``StepView.arms`` for a one-arm robot."""


@dataclasses.dataclass
class StepView:
    """What the page shows of one env step (the actor fills it once per step)."""

    step: int  # env steps of the run so far
    episode: int
    episode_step: int
    reward: float
    episode_return: float
    success: bool
    acting: str  # "policy" | "human" | "held" | "paused"
    frames: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # as the policy sees them, HxWx3 uint8
    full_frames: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # full camera frames, when known
    arms: dict[str, ArmView] = dataclasses.field(default_factory=dict)  # ONE_ARM, or "left" and "right"
    weights_version: int = -1
    weights_age_s: float | None = None
    time: float = dataclasses.field(default_factory=time.time)  # when the frames were captured (wall clock)


class ConsoleHub:
    """Actor side: ``publish`` each step, ``publish_learner`` now and then, ``commands()`` and ``paused``
    between steps, ``teleop_command()`` from the browser teleop. Server side: ``latest``, ``wait_newer``,
    ``command``, ``claim_teleop`` / ``release_teleop`` / ``teleop_input``."""

    def __init__(self, *, teleop_timeout_s: float = 0.5):
        self.teleop_timeout_s = teleop_timeout_s
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._view: StepView | None = None
        self._seq = 0
        self._learner: dict[str, Any] = {}
        self._commands: collections.deque[str] = collections.deque(maxlen=64)
        self._paused = False
        self._teleop_holder: str | None = None
        self._teleop: tuple[TeleopCommand, float] | None = None  # newest input and when it arrived (monotonic)

    # ---- actor side ----------------------------------------------------------------------------------
    def publish(self, view: StepView) -> None:
        with self._changed:
            self._view = view
            self._seq += 1
            self._changed.notify_all()

    def publish_learner(self, status: dict[str, Any]) -> None:
        with self._lock:
            self._learner = dict(status)

    def commands(self) -> list[str]:
        """The page's commands since the last call, oldest first (pause/resume are also in ``paused``)."""
        with self._lock:
            out = list(self._commands)
            self._commands.clear()
            return out

    @property
    def paused(self) -> bool:
        return self._paused

    def teleop_command(self) -> TeleopCommand | None:
        """The browser's teleop input while a page holds the teleop and its input is fresh; None otherwise
        (a page that stops sending, or disappears, hands control back after ``teleop_timeout_s``)."""
        with self._lock:
            if self._teleop_holder is None or self._teleop is None:
                return None
            command, received = self._teleop
            if time.monotonic() - received > self.teleop_timeout_s:
                return None
            return command

    # ---- server side ---------------------------------------------------------------------------------
    def latest(self) -> tuple[int, StepView | None, dict[str, Any]]:
        with self._lock:
            return self._seq, self._view, dict(self._learner)

    def wait_newer(self, seq: int, timeout: float) -> tuple[int, StepView | None, dict[str, Any]]:
        """The newest step once it is newer than ``seq`` (or after ``timeout`` s)."""
        with self._changed:
            self._changed.wait_for(lambda: self._seq > seq, timeout)
            return self._seq, self._view, dict(self._learner)

    def command(self, name: str) -> None:
        if name not in COMMANDS:
            raise ValueError(f"unknown console command {name!r}; expected one of {COMMANDS}")
        with self._lock:
            if name in ("pause", "resume"):
                self._paused = name == "pause"
            self._commands.append(name)

    def claim_teleop(self, client: str) -> bool:
        """Give the teleop to ``client`` if nobody holds it (or the holder went silent); True when it holds it."""
        with self._lock:
            stale = self._teleop is None or time.monotonic() - self._teleop[1] > self.teleop_timeout_s
            if self._teleop_holder in (None, client) or stale:
                if self._teleop_holder != client:
                    self._teleop = None
                self._teleop_holder = client
                return True
            return False

    def release_teleop(self, client: str) -> None:
        with self._lock:
            if self._teleop_holder == client:
                self._teleop_holder, self._teleop = None, None

    def teleop_input(self, client: str, command: TeleopCommand) -> bool:
        """Take ``command`` from ``client`` if it holds the teleop; False (ignored) otherwise."""
        with self._lock:
            if self._teleop_holder != client:
                return False
            self._teleop = (command, time.monotonic())
            return True

    @property
    def teleop_holder(self) -> str | None:
        return self._teleop_holder
