"""Reward from a person at the keyboard (real arm, before a classifier exists): space = success.

``KeyboardReward(env)`` reads the terminal (works over SSH) while the episode runs. A press of
``success_key`` during a step makes that step's reward ``success_reward``, sets
``info["succeed"]`` and ends the episode (``terminated``); ``fail_key`` ends it without success
(``truncated``). Keys pressed between episodes are dropped at reset.
"""

from __future__ import annotations

from typing import Protocol

import gymnasium as gym

from serl.devices.keyboard import TerminalKeyReader


class KeySource(Protocol):
    def drain(self) -> list: ...  # KeyEvent(key, timestamp) objects, oldest first

    def close(self) -> None: ...


class KeyboardReward(gym.Wrapper):
    """A key press during a step decides its reward and ends the episode (see the module docstring)."""

    def __init__(
        self,
        env: gym.Env,
        keys: KeySource | None = None,
        *,
        success_key: str = "space",
        fail_key: str | None = "n",
        success_reward: float = 1.0,
        keep_env_reward: bool = False,
    ):
        super().__init__(env)
        if keys is None:
            keys = TerminalKeyReader()
        self.keys = keys
        self.success_key = success_key
        self.fail_key = fail_key
        self.success_reward = float(success_reward)
        self.keep_env_reward = keep_env_reward

    def reset(self, **kwargs):
        self.keys.drain()
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        pressed = {event.key for event in self.keys.drain()}
        pressed |= {k for k, v in info.get("teleop_buttons", {}).items() if v}
        reward = float(reward) if self.keep_env_reward else 0.0
        info = dict(info)
        if self.success_key in pressed:
            reward = self.success_reward
            info["succeed"] = True
            terminated = True
        else:
            info["succeed"] = bool(info.get("succeed", False)) and self.keep_env_reward
            if self.fail_key is not None and self.fail_key in pressed:
                truncated = True
        info["reward_source"] = "keyboard"
        return obs, reward, terminated, truncated, info

    def close(self):
        try:
            self.keys.close()
        finally:
            super().close()
