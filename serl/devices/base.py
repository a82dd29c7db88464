"""The ``Teleop`` interface: every input device (SpaceMouse, gamepad, keyboard, scripted) yields a ``TeleopCommand``.

A command is a 6-D twist in [-1, 1] (translation xyz, rotation xyz, in the env's action frame
after the configured axis mapping), an optional gripper command, the device's named buttons,
and ``active``: whether a person is giving input now (the intervention wrapper takes over then).
A device that knows the env's whole action (a two-arm scripted expert) gives it as ``action`` instead.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from typing import Callable, Iterable, Mapping, Union

import numpy as np

GripperCommand = Union[str, float, None]  # "open" | "close" | a gripper action value in [-1, 1] | None
AXIS_NAMES = ("x", "y", "z", "roll", "pitch", "yaw")


class DeviceNotFoundError(RuntimeError):
    """No device of the requested kind is connected, or it cannot be opened (permissions)."""


@dataclasses.dataclass(frozen=True)
class TeleopCommand:
    twist: np.ndarray  # (6,) in [-1, 1]
    gripper: GripperCommand = None
    buttons: Mapping[str, bool] = dataclasses.field(default_factory=dict)
    active: bool = False
    timestamp: float = 0.0
    # The whole env action, from a device that gives one (the scripted expert of a two-arm task); taken as is.
    action: np.ndarray | None = None

    def __post_init__(self):
        if self.action is not None:
            action = np.asarray(self.action, dtype=np.float64).reshape(-1)
            if not np.all(np.isfinite(action)):
                raise ValueError("TeleopCommand.action: contains NaN or inf")
            object.__setattr__(self, "action", action)
        twist = np.asarray(self.twist, dtype=np.float64).reshape(-1)
        if twist.shape != (6,):
            raise ValueError(f"TeleopCommand.twist: expected 6 values, got shape {twist.shape}")
        if not np.all(np.isfinite(twist)):
            raise ValueError("TeleopCommand.twist: contains NaN or inf")
        gripper = self.gripper
        if isinstance(gripper, str):
            if gripper not in ("open", "close"):
                raise ValueError(f"TeleopCommand.gripper: expected 'open', 'close', a number or None, got {gripper!r}")
        elif gripper is not None:
            gripper = float(gripper)
            if not np.isfinite(gripper):
                raise ValueError("TeleopCommand.gripper: not finite")
        object.__setattr__(self, "twist", twist)
        object.__setattr__(self, "gripper", gripper)
        object.__setattr__(self, "buttons", dict(self.buttons))

    @classmethod
    def idle(cls, timestamp: float | None = None) -> "TeleopCommand":
        return cls(np.zeros(6), timestamp=time.monotonic() if timestamp is None else timestamp)

    @classmethod
    def move(cls, twist, gripper: GripperCommand = None, **buttons: bool) -> "TeleopCommand":
        """An active command (convenience for scripts and tests)."""
        return cls(np.asarray(twist, dtype=np.float64), gripper, buttons, active=True, timestamp=time.monotonic())


@dataclasses.dataclass(frozen=True)
class TeleopConfig:
    """How raw device axes become the twist.

    ``axis_map[i]`` is the raw axis feeding output axis i and ``axis_signs[i]`` its sign, so a device
    held rotated on the desk is fixed here, not in code. ``deadzone`` is a fraction of full scale;
    values inside it read as zero and the rest is rescaled so output still reaches 1.
    """

    deadzone: float = 0.05
    translation_scale: float = 1.0
    rotation_scale: float = 1.0
    axis_map: tuple[int, int, int, int, int, int] = (0, 1, 2, 3, 4, 5)
    axis_signs: tuple[float, float, float, float, float, float] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    lock_rotation: bool = False  # translation only (common for pick tasks)

    def __post_init__(self):
        if not 0.0 <= self.deadzone < 1.0:
            raise ValueError(f"TeleopConfig.deadzone: expected 0 <= deadzone < 1, got {self.deadzone}")
        if sorted(self.axis_map) != list(range(6)):
            raise ValueError(f"TeleopConfig.axis_map: expected a permutation of 0..5, got {self.axis_map}")
        if len(self.axis_signs) != 6 or any(s not in (-1, 1) for s in self.axis_signs):
            raise ValueError(f"TeleopConfig.axis_signs: expected six values of +1 or -1, got {self.axis_signs}")
        for name, value in (("translation_scale", self.translation_scale), ("rotation_scale", self.rotation_scale)):
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"TeleopConfig.{name}: expected a finite value >= 0, got {value}")


def shape_twist(raw: Iterable[float], config: TeleopConfig) -> np.ndarray:
    """Raw axes in [-1, 1] → twist: axis mapping and signs, deadzone with rescaling, scale, clip to [-1, 1]."""
    raw = np.clip(np.asarray(raw, dtype=np.float64).reshape(6), -1.0, 1.0)
    mapped = raw[list(config.axis_map)] * np.asarray(config.axis_signs, dtype=np.float64)
    magnitude = np.abs(mapped)
    shaped = np.where(magnitude <= config.deadzone, 0.0, np.sign(mapped) * (magnitude - config.deadzone) / (1.0 - config.deadzone))
    shaped[:3] *= config.translation_scale
    shaped[3:] *= 0.0 if config.lock_rotation else config.rotation_scale
    return np.clip(shaped, -1.0, 1.0)


class Teleop(abc.ABC):
    """An input device. ``read()`` never blocks: it returns the newest command (idle when nothing is pressed)."""

    config: TeleopConfig = TeleopConfig()

    @abc.abstractmethod
    def read(self) -> TeleopCommand: ...

    def reset(self) -> None:
        """A new episode starts (the intervention wrapper calls this on env reset)."""

    def close(self) -> None:
        """Release the device. Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ScriptedTeleop(Teleop):
    """Replays commands: a sequence (one per ``read``; idle once exhausted) or a callable returning one.

    A legitimate input source for tests, benchmarks and scripted experts.
    """

    def __init__(self, source: Iterable[TeleopCommand | np.ndarray] | Callable[[], TeleopCommand]):
        self._call = source if callable(source) else None
        self._queue = None if callable(source) else list(source)
        self._index = 0
        self.reads = 0

    def read(self) -> TeleopCommand:
        self.reads += 1
        if self._call is not None:
            return self._call()
        if self._index >= len(self._queue):
            return TeleopCommand.idle()
        item = self._queue[self._index]
        self._index += 1
        if isinstance(item, TeleopCommand):
            return item
        twist = np.asarray(item, dtype=np.float64)
        return TeleopCommand(twist, active=bool(np.any(twist != 0.0)), timestamp=time.monotonic())

    @property
    def exhausted(self) -> bool:
        return self._queue is not None and self._index >= len(self._queue)
