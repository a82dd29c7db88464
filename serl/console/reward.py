"""The page's success / failure / end-episode marks as a reward, through ``KeyboardReward``'s logic.

``ConsoleMarks`` is a ``KeySource`` the actor feeds from the hub's commands; ``ConsoleReward`` is a
``KeyboardReward`` over it that keeps the env's own reward until a mark arrives. A mark takes effect on
the next env step: success makes that step's reward 1, ``succeed`` and ``terminated``; failure ends it
as ``truncated`` with ``succeed`` False; end-episode truncates it and leaves success to the env.
"""

from __future__ import annotations

import collections
import threading
import time

import gymnasium as gym

from serl.devices.keyboard import KeyEvent
from serl.envs.keyboard_reward import KeyboardReward

SUCCESS, FAILURE, END = "success", "failure", "end"
MARKS = {"mark_success": SUCCESS, "mark_failure": FAILURE, "end_episode": END}
"""Hub command → mark."""


class ConsoleMarks:
    """A thread-safe ``KeySource`` of marks; ``last`` holds the marks of the newest ``drain``."""

    def __init__(self):
        self._lock = threading.Lock()
        self._events: collections.deque[KeyEvent] = collections.deque(maxlen=16)
        self.last: set[str] = set()

    def mark(self, name: str) -> None:
        if name not in (SUCCESS, FAILURE, END):
            raise ValueError(f"mark: expected one of {(SUCCESS, FAILURE, END)}, got {name!r}")
        with self._lock:
            self._events.append(KeyEvent(name, time.monotonic()))

    def pending(self) -> bool:
        with self._lock:
            return bool(self._events)

    def drain(self) -> list[KeyEvent]:
        with self._lock:
            out = list(self._events)
            self._events.clear()
        self.last = {event.key for event in out}
        return out

    def close(self) -> None:
        pass


class ConsoleReward(KeyboardReward):
    """``KeyboardReward`` fed by ``ConsoleMarks``, keeping the env's reward between marks."""

    def __init__(self, env: gym.Env, marks: ConsoleMarks, success_reward: float = 1.0):
        super().__init__(env, marks, success_key=SUCCESS, fail_key=FAILURE, success_reward=success_reward,
                         keep_env_reward=True)
        self.marks = marks

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        marked = self.marks.last
        if FAILURE in marked and SUCCESS not in marked:
            info["succeed"] = False  # a person's failure wins over the env's success of the same step
            terminated, truncated = False, True
        if END in marked:
            truncated = truncated or not terminated
        if marked:
            info["reward_source"] = "console"
        else:  # the env's reward stood; KeyboardReward named itself
            info.pop("reward_source", None)
        return obs, reward, terminated, truncated, info


def console_marks(env: gym.Env) -> ConsoleMarks | None:
    """The marks of the ``ConsoleReward`` under ``env``'s wrappers (None without one)."""
    layer = env
    while isinstance(layer, gym.Wrapper):
        if isinstance(layer, ConsoleReward):
            return layer.marks
        layer = layer.env
    return None
