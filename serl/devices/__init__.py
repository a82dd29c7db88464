"""Teleop devices behind one interface: SpaceMouse (hidapi), gamepad (pygame/SDL), keyboard
(terminal or pynput), and a scripted expert for the twin. Device libraries load only when a
device is opened; ``make_teleop`` picks one by name and says clearly what is missing."""

from __future__ import annotations

import sys
from typing import Any

from serl.devices.base import (
    DeviceNotFoundError,
    ScriptedTeleop,
    Teleop,
    TeleopCommand,
    TeleopConfig,
    shape_twist,
)

TELEOP_KINDS = ("keyboard", "spacemouse", "gamepad", "scripted", "browser")

__all__ = [
    "DeviceNotFoundError",
    "ScriptedTeleop",
    "TELEOP_KINDS",
    "Teleop",
    "TeleopCommand",
    "TeleopConfig",
    "discover",
    "make_teleop",
    "shape_twist",
]


def make_teleop(kind: str, env: Any = None, config: TeleopConfig | None = None, **options) -> Teleop:
    """Open a teleop device by name: "keyboard", "spacemouse", "gamepad", "scripted" (needs ``env``) or "browser"
    (the training console's page; needs ``hub``, its ``ConsoleHub``).

    On a two-arm env a person's device drives one arm at a time (``TwoArmTeleop``, tab switches); a SpaceMouse per
    arm, as HIL-SERL drives two arms, with ``arm_paths=(left_hid_path, right_hid_path)``."""
    from serl.envs.dual_franka_env import DualFrankaEnv

    if kind != "scripted" and env is not None and isinstance(env.unwrapped, DualFrankaEnv):
        from serl.devices.two_arms import TwoArmTeleop

        paths = options.pop("arm_paths", None)
        if paths is not None:
            if kind != "spacemouse" or len(paths) != 2:
                raise ValueError("arm_paths: two SpaceMouse HID paths, one per arm (teleop 'spacemouse')")
            return TwoArmTeleop(env, {arm: make_teleop(kind, config=config, path=path, **options)
                                      for arm, path in zip(env.unwrapped.arms, paths)})
        return TwoArmTeleop(env, make_teleop(kind, config=config, **options))
    # a device's module loads only when that device is opened (the scripted expert's brings the env stack)
    extra = {} if config is None else {"config": config}
    if kind == "keyboard":
        from serl.devices.keyboard import make_keyboard

        return make_keyboard(config, **options)
    if kind == "spacemouse":
        from serl.devices.spacemouse import SpaceMouse

        return SpaceMouse(**extra, **options)
    if kind == "gamepad":
        from serl.devices.gamepad import Gamepad

        return Gamepad(**extra, **options)
    if kind == "scripted":
        if env is None:
            raise ValueError("teleop 'scripted' needs the env it drives (make_teleop('scripted', env=env))")
        from serl.devices.scripted import ExpertConfig, HandoverExpert, ScriptedExpert
        from serl.envs.dual_franka_env import DualFrankaEnv

        expert = HandoverExpert if isinstance(env.unwrapped, DualFrankaEnv) else ScriptedExpert
        return expert(env, ExpertConfig(**options))
    if kind == "browser":
        if options.get("hub") is None:
            raise ValueError("teleop 'browser' needs the console's hub (make_teleop('browser', hub=hub))")
        from serl.console.teleop import BrowserTeleop

        return BrowserTeleop(options["hub"])
    raise ValueError(f"teleop: unknown kind {kind!r}; expected one of {TELEOP_KINDS}")


def discover() -> dict[str, str]:
    """What each device kind would use here, or why it is unavailable (for ``--help``-style reports)."""
    report: dict[str, str] = {}
    try:  # as in make_teleop, each device's module loads only here
        from serl.devices.spacemouse import describe_missing, list_spacemice, _import_hid

        entries = _import_hid().enumerate()
        found = list_spacemice(lambda: entries)
        report["spacemouse"] = f"{found[0]['model'].name} at {found[0]['path']!r}" if found else describe_missing(entries)
    except DeviceNotFoundError as err:
        report["spacemouse"] = str(err)
    try:
        from serl.devices.gamepad import _import_pygame

        pygame = _import_pygame()
        pygame.display.init()
        pygame.joystick.init()
        count = pygame.joystick.get_count()
        report["gamepad"] = (f"{count} joystick(s): " + ", ".join(pygame.joystick.Joystick(i).get_name() for i in range(count))
                             if count else "no gamepad found (on Linux: user in the 'input' group?)")
    except DeviceNotFoundError as err:
        report["gamepad"] = str(err)
    from serl.devices.keyboard import has_display

    report["keyboard"] = ("pynput (display found)" if has_display() else
                          "terminal" if sys.stdin is not None and sys.stdin.isatty() else "no terminal on stdin (/dev/tty is tried)")
    return report
