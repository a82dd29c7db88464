"""``TwoArmTeleop``: a person driving a two-arm env (``DualFrankaEnv``).

Either one device per arm (HIL-SERL's two SpaceMice), or one device for both that drives one arm at a time and
switches arm on a button (``tab`` on the keyboard; ``switch_button``) or names it (``drive_button(arm)``: the
console page's arm selector). Its commands carry the whole action: the
driven arm's part from its device (the twist in that arm's base frame, the gripper buttons), the other arm's
part still (no motion, gripper unchanged), so ``InterventionWrapper`` stores what both arms did.
"""

from __future__ import annotations

import time
from typing import Mapping

import gymnasium as gym
import numpy as np

from serl.devices.base import Teleop, TeleopCommand

GRIPPER_VALUES = {"open": 1.0, "close": -1.0}


def drive_button(arm: str) -> str:
    """The button a shared device's command holds to say which arm it drives (the console page's arm selector)."""
    return f"arm:{arm}"


class TwoArmTeleop(Teleop):
    """One device per arm (``{"left": ..., "right": ...}``), or one ``Teleop`` for both, switched by a button."""

    def __init__(self, env: gym.Env, devices: Mapping[str, Teleop] | Teleop, switch_button: str = "tab"):
        from serl.envs.dual_franka_env import DualFrankaEnv

        base = env.unwrapped
        if not isinstance(base, DualFrankaEnv):
            raise ValueError(f"TwoArmTeleop drives a DualFrankaEnv, got {type(base).__name__}")
        self.arms = base.arms
        if isinstance(devices, Teleop):
            self.devices, self.shared = {arm: devices for arm in self.arms}, True
        else:
            if set(devices) != set(self.arms):
                raise ValueError(f"TwoArmTeleop: one device per arm {sorted(self.arms)}, got {sorted(devices)}")
            self.devices, self.shared = dict(devices), False
        self.switch_button = switch_button
        self.driven = next(iter(self.arms))  # the arm a shared device drives now

    def reset(self) -> None:
        for device in set(self.devices.values()):
            device.reset()

    def read(self) -> TeleopCommand:
        if self.shared:
            command = self.devices[self.driven].read()
            named = [arm for arm in self.arms if command.buttons.get(drive_button(arm))]
            if named:
                self.driven = named[0]
            elif command.buttons.get(self.switch_button):
                self.driven = next(arm for arm in self.arms if arm != self.driven)
            commands = {self.driven: command}
        else:
            commands = {arm: device.read() for arm, device in self.devices.items()}
        action, buttons = [], {}
        for arm, env in self.arms.items():
            layout = env.action_layout
            part = np.zeros(layout.size)
            command = commands.get(arm)
            if command is not None:
                buttons.update(command.buttons)
                if command.active:
                    part[: layout.size - layout.gripper] = layout.from_twist(np.clip(command.twist, -1.0, 1.0))
                    if layout.gripper:
                        gripper = command.gripper
                        part[layout.gripper_index] = GRIPPER_VALUES.get(gripper, 0.0) if isinstance(gripper, str) \
                            else (0.0 if gripper is None else float(gripper))
            action.append(part)
        active = any(command.active for command in commands.values())
        buttons[f"driving_{self.driven}"] = self.shared
        return TeleopCommand(np.zeros(6), None, buttons, active=active, timestamp=time.monotonic(),
                             action=np.concatenate(action))

    def close(self) -> None:
        for device in set(self.devices.values()):
            device.close()
