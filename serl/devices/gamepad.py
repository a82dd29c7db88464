"""Gamepads through SDL (pygame): joystick events → twist, gripper and named buttons.

``GamepadState`` holds the parsing and is fed neutral ``GamepadEvent``s, so recorded event lists
and live pygame events go through the same code. The default mapping is an Xbox-style pad as
SDL's joystick API numbers it on Linux (axes 0/1 left stick, 3/4 right stick, 2/5 triggers;
buttons 0 A, 1 B, 2 X, 3 Y, 4 LB, 5 RB, 6 back, 7 start): left stick moves in x/y, right stick
vertical moves in z and horizontal yaws, the d-pad rolls and pitches, RB closes and LB opens.

On Linux the pad's /dev/input/event* node must be readable (user in the ``input`` group).
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import Any, Iterable

import numpy as np

from serl.devices.base import DeviceNotFoundError, Teleop, TeleopCommand, TeleopConfig, shape_twist

_SOURCE = re.compile(r"^(-?)(axis(\d+)|hat(\d+)([xy]))$")


@dataclasses.dataclass(frozen=True)
class GamepadEvent:
    kind: str  # "axis" | "button_down" | "button_up" | "hat"
    index: int
    value: Any = None  # axis: float in [-1, 1]; hat: (x, y) in {-1, 0, 1}


@dataclasses.dataclass(frozen=True)
class GamepadMapping:
    """Which stick/hat drives each twist axis: "axisN", "-axisN" (inverted), "hatNx"/"hatNy", or "" for none."""

    twist_sources: tuple[str, str, str, str, str, str] = ("-axis1", "-axis0", "-axis4", "hat0x", "hat0y", "-axis3")
    button_names: tuple[str, ...] = ("a", "b", "x", "y", "lb", "rb", "back", "start", "guide", "ls", "rs")
    close_button: str = "rb"
    open_button: str = "lb"

    def __post_init__(self):
        if len(self.twist_sources) != 6:
            raise ValueError(f"GamepadMapping.twist_sources: expected 6 entries, got {len(self.twist_sources)}")
        for source in self.twist_sources:
            if source and not _SOURCE.match(source):
                raise ValueError(f"GamepadMapping.twist_sources: bad entry {source!r} (use 'axis3', '-axis1', 'hat0x', '')")


class GamepadState:
    """Current sticks, hats and buttons, updated one event at a time."""

    def __init__(self, mapping: GamepadMapping = GamepadMapping()):
        self.mapping = mapping
        self.axes: dict[int, float] = {}
        self.hats: dict[int, tuple[int, int]] = {}
        self.pressed: set[int] = set()
        self.events = 0

    def handle(self, event: GamepadEvent) -> None:
        if event.kind == "axis":
            self.axes[event.index] = float(np.clip(event.value, -1.0, 1.0))
        elif event.kind == "hat":
            x, y = event.value
            self.hats[event.index] = (int(x), int(y))
        elif event.kind == "button_down":
            self.pressed.add(event.index)
        elif event.kind == "button_up":
            self.pressed.discard(event.index)
        else:
            raise ValueError(f"GamepadEvent.kind: unknown {event.kind!r}")
        self.events += 1

    def handle_all(self, events: Iterable[GamepadEvent]) -> None:
        for event in events:
            self.handle(event)

    def release_all(self) -> None:
        """Forget every input (the pad was unplugged)."""
        self.axes.clear()
        self.hats.clear()
        self.pressed.clear()

    def raw_twist(self) -> np.ndarray:
        raw = np.zeros(6)
        for i, source in enumerate(self.mapping.twist_sources):
            match = _SOURCE.match(source) if source else None
            if match is None:
                continue
            sign = -1.0 if match.group(1) else 1.0
            if match.group(3) is not None:
                value = self.axes.get(int(match.group(3)), 0.0)
            else:
                hat = self.hats.get(int(match.group(4)), (0, 0))
                value = float(hat[0] if match.group(5) == "x" else hat[1])
            raw[i] = sign * value
        return raw

    def buttons(self) -> dict[str, bool]:
        names = self.mapping.button_names
        return {(names[i] if i < len(names) else f"button_{i}"): True for i in sorted(self.pressed)}

    def command(self, config: TeleopConfig, timestamp: float | None = None) -> TeleopCommand:
        twist = shape_twist(self.raw_twist(), config)
        buttons = self.buttons()
        gripper = "close" if buttons.get(self.mapping.close_button) else "open" if buttons.get(self.mapping.open_button) else None
        active = bool(np.any(twist != 0.0) or gripper is not None)
        return TeleopCommand(twist, gripper, buttons, active, time.monotonic() if timestamp is None else timestamp)


def from_pygame(event: Any, pygame: Any) -> GamepadEvent | None:
    """A pygame joystick event as a ``GamepadEvent`` (None for other events)."""
    if event.type == pygame.JOYAXISMOTION:
        return GamepadEvent("axis", int(event.axis), float(event.value))
    if event.type == pygame.JOYBUTTONDOWN:
        return GamepadEvent("button_down", int(event.button))
    if event.type == pygame.JOYBUTTONUP:
        return GamepadEvent("button_up", int(event.button))
    if event.type == pygame.JOYHATMOTION:
        return GamepadEvent("hat", int(event.hat), tuple(event.value))
    return None


def _import_pygame():
    # Headless: no window is needed for joystick events.
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_JOYSTICK_ALLOW_BACKGROUND_EVENTS", "1")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import pygame
    except ImportError as err:
        raise DeviceNotFoundError("gamepad support needs pygame: pip install 'serl-suite[devices]' (or pip install pygame)") from err
    return pygame


class Gamepad(Teleop):
    """The first (or ``index``-th) joystick SDL sees. ``read()`` drains pygame's event queue, then reports.

    ``require_device=False`` lets it run without a pad (events posted to pygame's queue still count);
    tests use that with synthetic events.
    """

    def __init__(
        self,
        config: TeleopConfig = TeleopConfig(deadzone=0.1),
        mapping: GamepadMapping = GamepadMapping(),
        *,
        index: int = 0,
        require_device: bool = True,
    ):
        pygame = _import_pygame()
        self.config = config
        self.state = GamepadState(mapping)
        self._pygame = pygame
        pygame.display.init()
        pygame.joystick.init()
        self.joystick = None
        count = pygame.joystick.get_count()
        if count > index:
            self.joystick = pygame.joystick.Joystick(index)
            self.joystick.init()
        elif require_device:
            raise DeviceNotFoundError(
                f"no gamepad found (SDL sees {count} joystick(s), wanted index {index}); plug one in, and on Linux "
                "make /dev/input/event* readable (sudo usermod -aG input $USER, then log in again)"
            )

    @property
    def name(self) -> str:
        return self.joystick.get_name() if self.joystick is not None else "no gamepad"

    def read(self) -> TeleopCommand:
        pygame = self._pygame
        for event in pygame.event.get():
            if event.type == getattr(pygame, "JOYDEVICEREMOVED", -1):
                self.state.release_all()
                continue
            parsed = from_pygame(event, pygame)
            if parsed is not None:
                self.state.handle(parsed)
        return self.state.command(self.config)

    def close(self) -> None:
        if self.joystick is not None:
            self.joystick.quit()
            self.joystick = None
