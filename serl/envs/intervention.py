"""Human interventions: non-idle teleop input replaces the policy's action for that step.

``InterventionWrapper(env, teleop)`` reads the device once per step. When the command is active
(motion outside the deadzone or a gripper button), its action is executed instead of the
policy's, and ``info`` says so:

- ``info["intervened"]``: True on steps the human acted;
- ``info["teleop_action"]``: the human's action (None otherwise);
- ``info["executed_action"]``: what the env actually got, always, so the actor stores the human's
  action (HIL-SERL also adds intervened transitions to the demo buffer);
- ``info["teleop_buttons"]``: the device's buttons this step (for recorders: success, discard, quit).

Works on any env with a Box action space: the first six dimensions take the twist (scaled to the
space's bounds), a seventh takes the gripper (``gripper_close``/``gripper_open`` action values,
``gripper_idle`` when no gripper button is pressed, or the policy's value when that is None).

The person steers in the robot's base frame (``teleop_frame="base"``) even when the policy acts in
another frame: below a ``RelativeFrame`` wrapper (actions in the reset pose's frame) or on an
``ee``-frame task, the twist is rotated into the policy's action frame, and that is what is stored.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from robot_servers.control.pose import quat_conjugate
from serl.devices.base import Teleop, TeleopCommand
from serl.envs.franka_env import franka_env_under
from serl.envs.task_config import ActionLayout
from serl.envs.wrappers import RelativeFrame, action_layout


def base_to_action_frame(env: gym.Env, twist: np.ndarray) -> np.ndarray:
    """A base-frame 6-D twist expressed in the frame of ``env``'s actions (see module docstring)."""
    out = np.asarray(twist, dtype=np.float64).copy()
    if out.shape[0] < 6:
        return out
    base = franka_env_under(env)
    if base is not None and base.task.action_frame == "ee" and base.state is not None:
        tcp_quat = np.asarray(base.state.tcp_pose[3:7], dtype=np.float64)
        return ActionLayout(rotation=True, gripper=False).rotate(quat_conjugate(tcp_quat), out)
    layer = env
    while isinstance(layer, gym.Wrapper):
        if isinstance(layer, RelativeFrame):
            out = layer.twist_from_base(out)
        layer = layer.env
    return out


class InterventionWrapper(gym.Wrapper):
    """Non-idle teleop input replaces the policy's action for that step (see the module docstring)."""

    def __init__(
        self,
        env: gym.Env,
        teleop: Teleop,
        *,
        gripper_close: float = -1.0,
        gripper_open: float = 1.0,
        gripper_idle: float | None = 0.0,
        teleop_frame: str = "base",
        enabled: bool = True,
        owns_teleop: bool = True,
    ):
        super().__init__(env)
        space = env.action_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"InterventionWrapper needs a 1-D Box action space, got {space}")
        if space.shape[0] < 1:
            raise ValueError("InterventionWrapper: empty action space")
        if teleop_frame not in ("base", "action"):
            raise ValueError(f"teleop_frame: expected 'base' or 'action', got {teleop_frame!r}")
        self.teleop = teleop
        self.owns_teleop = owns_teleop  # False: the device is shared (the tasks of a cycle) and closed by its owner
        self.teleop_frame = teleop_frame
        self.gripper_close = float(gripper_close)
        self.gripper_open = float(gripper_open)
        self.gripper_idle = gripper_idle
        self.enabled = enabled
        self.last_command: TeleopCommand | None = None
        self.episode_interventions = 0
        self.episode_steps = 0

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.teleop.reset()
        self.episode_interventions = 0
        self.episode_steps = 0
        return obs, {**info, "intervened": False, "teleop_action": None}

    def teleop_to_action(self, command: TeleopCommand, policy_action: np.ndarray | None = None) -> np.ndarray:
        """The env action a teleop command means (twist scaled into the Box, gripper mapped)."""
        space = self.env.action_space
        low = np.asarray(space.low, dtype=np.float64)
        high = np.asarray(space.high, dtype=np.float64)
        if command.action is not None:
            if command.action.shape != space.shape:
                raise ValueError(f"teleop action: expected shape {space.shape}, got {command.action.shape}")
            return np.clip(command.action, low, high).astype(space.dtype)
        dim = space.shape[0]
        centre, half = (high + low) / 2.0, (high - low) / 2.0
        action = centre.copy() if policy_action is None else np.asarray(policy_action, dtype=np.float64).copy()
        layout = action_layout(self.env)
        twist = np.clip(command.twist, -1.0, 1.0)
        if self.teleop_frame == "base":
            twist = np.clip(base_to_action_frame(self.env, twist), -1.0, 1.0)
        motion = layout.from_twist(twist)[:dim]
        moving = motion.shape[0]
        action[:moving] = centre[:moving] + half[:moving] * motion
        if layout.gripper and dim == layout.size:
            index = layout.gripper_index
            gripper = command.gripper
            if gripper == "close":
                action[index] = self.gripper_close
            elif gripper == "open":
                action[index] = self.gripper_open
            elif gripper is not None:
                action[index] = float(gripper)
            elif self.gripper_idle is not None:
                action[index] = self.gripper_idle
        return np.clip(action, low, high).astype(space.dtype)

    def step(self, action):
        command = self.teleop.read() if self.enabled else None
        self.last_command = command
        intervened = command is not None and command.active
        policy_action = np.asarray(action, dtype=self.env.action_space.dtype)
        executed = self.teleop_to_action(command, policy_action) if intervened else policy_action
        obs, reward, terminated, truncated, info = self.env.step(executed)
        self.episode_steps += 1
        self.episode_interventions += intervened
        info = dict(info)
        # A wrapper below may report the action it really executed (e.g. in another frame); keep ours on top.
        info["intervened"] = bool(intervened or info.get("intervened", False))
        info["teleop_action"] = executed.copy() if intervened else info.get("teleop_action")
        info["executed_action"] = executed.copy()
        info["teleop_buttons"] = dict(command.buttons) if command is not None else {}
        info["intervention_rate"] = self.episode_interventions / self.episode_steps
        return obs, reward, terminated, truncated, info

    def close(self):
        try:
            if self.owns_teleop:
                self.teleop.close()
        finally:
            super().close()
