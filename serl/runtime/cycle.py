"""Whose turn it is in a task cycle (``serl.envs.task_cycles``), for an actor with one lane per task.

After each episode the next task of the cycle takes over from wherever the scene is. A task whose goal holds
already (its ground-truth reward says so at the start) is skipped. When the cycle's ``stuck`` check fires or
``fallback_after_failures`` episodes in a row failed, the cycle's fallback hooks put the scene back; each
fallback is printed, counted in ``status/cycle.json`` and logged in ``fallbacks.jsonl`` with the env step.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from serl.envs.franka_env import franka_env_under
from serl.envs.reset_hooks import build_hook
from serl.envs.task_cycles import get_cycle
from serl.runtime.logging import write_status


class CycleTurns:
    """Resets the lane whose turn it is. ``lanes`` in the cycle's order, each with ``task``, ``env``, ``steps`` and
    ``episodes`` (``serl.runtime.actor.Lane``, or a demo recorder's); ``run_dir`` None writes no files."""

    def __init__(self, cycle: str, lanes: list, run_dir: Path | None, seed: int):
        self.cycle = get_cycle(cycle)
        self.lanes = lanes
        self.hooks = [build_hook(spec) for spec in self.cycle.fallback_hooks]
        self.rng = np.random.default_rng(seed)
        self.log_path = None if run_dir is None else run_dir / "fallbacks.jsonl"
        self.status_path = None if run_dir is None else run_dir / "status" / "cycle.json"
        self.failures = 0  # failed episodes in a row, of any task
        self.fallbacks = 0
        self.skipped = 0
        self.turn = lanes[0].task
        self._report()

    def next_episode(self, finished, success: bool):
        """(lane, first observation) of the next episode; ``finished`` None at the start."""
        index = 0
        if finished is not None:
            self.failures = 0 if success else self.failures + 1
            index = (self.lanes.index(finished) + 1) % len(self.lanes)
            reason = self._stuck(finished)
            if reason:
                self._fallback(self.lanes[index], reason)
        for _ in range(len(self.lanes)):
            lane = self.lanes[index]
            obs, _ = lane.env.reset()
            if not self._goal_met(lane):
                break
            self.skipped += 1
            index = (index + 1) % len(self.lanes)
        else:
            self._fallback(lane, "every task's goal holds at once")
            obs, _ = lane.env.reset()
        self.turn = lane.task
        self._report()
        return lane, obs

    def _stuck(self, lane) -> str:
        if self.cycle.stuck is not None:
            reason = self.cycle.stuck(franka_env_under(lane.env))
            if reason:
                return reason
        if self.failures >= self.cycle.fallback_after_failures:
            return f"{self.failures} failed episodes in a row"
        return ""

    def _goal_met(self, lane) -> bool:
        """The task's ground-truth reward reports success before any step (a learned or human reward cannot say)."""
        base = franka_env_under(lane.env)
        reward = None if base is None else base.reward_fn
        if reward is None:
            return False
        scene, state = base.client.scene(), base.state
        met = bool(reward(scene, state)[1])
        reward.reset(scene, state)
        return met

    def _fallback(self, lane, reason: str) -> None:
        """Put the scene back with the cycle's hooks (the arm first goes to ``lane``'s reset pose)."""
        self.fallbacks += 1
        names = ", ".join(spec.name for spec in self.cycle.fallback_hooks)
        steps = sum(each.steps for each in self.lanes)
        print(f"[actor] {self.cycle.name}: fallback {self.fallbacks} at env step {steps}: {reason}; running {names}",
              flush=True)
        lane.env.reset()
        base = franka_env_under(lane.env)
        for hook in self.hooks:
            hook(base, self.fallbacks, self.rng)
        self.failures = 0
        if self.log_path is None:
            return
        with open(self.log_path, "a") as handle:
            handle.write(json.dumps({"fallback": self.fallbacks, "reason": reason, "env_steps": steps,
                                     "episodes": sum(each.episodes for each in self.lanes),
                                     "time": time.time()}) + "\n")

    def _report(self) -> None:
        if self.status_path is None:
            return
        write_status(self.status_path, {"cycle": self.cycle.name, "turn": self.turn, "fallbacks": self.fallbacks,
                                        "skipped": self.skipped, "failures_in_a_row": self.failures,
                                        "tasks": list(self.cycle.tasks)})

    def close(self) -> None:
        self._report()
