"""``DualFrankaEnv``: two arms, one control clock.

Each arm is a ``FrankaEnv`` on its own robot client (two robot servers, or two twins), with its own task config,
safety box, reset hooks and cameras. The action is the left arm's action followed by the right arm's, each in its
task's layout. A step checks both halves before anything is sent (a bad half moves neither arm), sends both targets
in the same control period (concurrently on real-time clients, so the arms' command times differ by a thread
hand-off, not a round trip), keeps one period, then observes both arms.

Observation: ``{"state": {"left/<name>": ..., "right/<name>": ...}, "images": {"left/<camera>": ...}}``.
Resets run one arm at a time (the left arm's hooks while the right holds still, then the right's), so a reset
never moves both arms at once. Two arms of one simulated world (``bimanual_twin``) advance it once per period, and
each reset first puts both arms at rest at home and the scene back, so that a seed gives one episode start.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import time
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from robot_servers.clock import PeriodicClock
from robot_servers.backends.base import RobotState
from serl.envs.franka_env import ArmCommand, FrankaEnv, RobotClientError

ARMS = ("left", "right")


def arm_key(arm: str, key: str) -> str:
    """An arm's observation entry or camera as a pair names it: ``left/tcp_pose``, ``right/wrist``."""
    return f"{arm}/{key}"
SKEW_HISTORY = 10_000  # command skews kept for statistics


class DualFrankaEnv(gym.Env):
    """Gymnasium env over a left and a right ``FrankaEnv``.

    ``reward_fn(env)`` returns (reward, success) for the pair; None sums the arms' rewards and counts success
    when every arm's reward says so.
    """

    metadata = {"render_modes": []}

    def __init__(self, left: FrankaEnv, right: FrankaEnv, *, task: Any = None,
                 reward_fn: Callable[["DualFrankaEnv"], tuple[float, bool]] | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.arms = {"left": left, "right": right}
        self.task = task  # the pair's task (a BimanualTask), or None
        if left.period != right.period:
            raise ValueError(f"control_hz: the arms must share one clock, got {left.task.control_hz} Hz (left) and "
                             f"{right.task.control_hz} Hz (right)")
        if left.client.lockstep != right.client.lockstep:
            raise ValueError("clients: both arms must be simulated in lockstep, or both run in real time")
        self.period = left.period
        self.lockstep = left.client.lockstep
        # two arms in one simulated world advance together: one advance per period, not one per arm
        self.one_world = left.client.simulation is not None and left.client.simulation == right.client.simulation
        # two arms served by one process: one request carries both targets (the server's names for the arms)
        pairs = [env.client.pair for env in self.arms.values()]
        self._served_as = ({arm: pair["arm"] for arm, pair in zip(self.arms, pairs)}
                           if all(pairs) and pairs[0]["id"] == pairs[1]["id"] else None)
        self.reward_fn = reward_fn
        self._clock, self._sleep = clock, sleep
        self._pacing = PeriodicClock(self.period, clock)
        self._sender = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="right-arm")
        self.command_skews: collections.deque[float] = collections.deque(maxlen=SKEW_HISTORY)
        """Seconds between the two arms' acknowledged targets (one process serving both: between the two targets
        it set), one entry per real-time step."""
        self._sizes = [env.action_space.shape[0] for env in self.arms.values()]
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(sum(self._sizes),), dtype=np.float32)
        state, images = {}, {}
        for arm, env in self.arms.items():
            state.update({arm_key(arm, k): v for k, v in env.observation_space["state"].items()})
            if "images" in env.observation_space.spaces:
                images.update({arm_key(arm, k): v for k, v in env.observation_space["images"].items()})
        spaces = {"state": gym.spaces.Dict(state)}
        if images:
            spaces["images"] = gym.spaces.Dict(images)
        self.observation_space = gym.spaces.Dict(spaces)

    # ----------------------------------------------------------------- gymnasium API

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self.one_world:  # both arms at rest and the scene back before either arm's hooks: a seed, one start
            for arm, env in self.arms.items():
                with _naming(arm):
                    env.client.reset_robot()
            self.arms["left"].client.reset_scene(int(self.np_random.integers(0, 2**31 - 1)))
        results = {}
        for i, (arm, env) in enumerate(self.arms.items()):
            with _naming(arm):
                results[arm] = env.reset(seed=None if seed is None else seed + i, options=options)
        self._pacing.restart()
        if hasattr(self.reward_fn, "reset"):
            self.reward_fn.reset(self)
        info = {"succeed": False, "intervened": False, **{arm: info for arm, (_, info) in results.items()}}
        return self._merge({arm: obs for arm, (obs, _) in results.items()}), info

    def step(self, action):
        commands = self.commands(action)
        if self.lockstep:
            for arm, env in self.arms.items():
                with _naming(arm):
                    env.send(commands[arm])
            self._advance()
            period_error = 0.0
        else:
            self._send(commands)
            self._pacing.wait(self._sleep)
            period_error = self._pacing.tick()
        observed = {}
        for arm, env in self.arms.items():
            with _naming(arm):
                observed[arm] = env.observe_after()
        results = {}
        for arm, env in self.arms.items():
            with _naming(arm):
                results[arm] = env.conclude(commands[arm], *observed[arm], period_error)
        obs = self._merge({arm: r[0] for arm, r in results.items()})
        if self.reward_fn is not None:
            reward, succeed = self.reward_fn(self)
        else:
            reward, succeed = sum(r[1] for r in results.values()), all(r[2] for r in results.values())
        terminated = bool(succeed)
        truncated = not terminated and any(r[3] for r in results.values())
        info = {"succeed": bool(succeed), "intervened": False, "control_period_error": period_error,
                **{arm: r[4] for arm, r in results.items()}}
        return obs, float(reward), terminated, truncated, info

    @property
    def state(self) -> dict[str, RobotState | None]:
        """The newest state each arm's env has read."""
        return {arm: env.state for arm, env in self.arms.items()}

    @property
    def state_order(self) -> tuple[str, ...]:
        """State entry names in the arms' task order, left first."""
        return tuple(arm_key(arm, key) for arm, env in self.arms.items() for key in env.state_order)

    def hold(self) -> None:
        """One control period with both arms' targets unchanged (see ``FrankaEnv.hold``)."""
        for arm, env in self.arms.items():
            with _naming(arm):
                env.send_hold()
        self.idle()

    def idle(self) -> None:
        """One control period in which nothing is sent to either arm; both states are read."""
        if self.lockstep:
            self._advance()
        else:
            self._pacing.wait(self._sleep)
            self._pacing.tick()
        for arm, env in self.arms.items():
            with _naming(arm):
                env.read_state()

    def safety_stop(self, reason: str) -> None:
        """Latch both arms' safety stops (see ``FrankaEnv.safety_stop``)."""
        for arm, env in self.arms.items():
            with _naming(arm):
                env.safety_stop(reason)

    def recover(self) -> None:
        """Clear both arms' error states (a safety stop, a reflex)."""
        for arm, env in self.arms.items():
            with _naming(arm):
                env.recover()

    def close(self):
        self._sender.shutdown(wait=True)
        for env in self.arms.values():
            env.close()

    # ----------------------------------------------------------------- the phases of a step

    def commands(self, action) -> dict[str, ArmCommand]:
        """Both arms' targets for one action; ValueError naming the arm (and nothing sent) when either half is bad."""
        try:
            arr = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"action: expected {sum(self._sizes)} numbers, got {action!r}") from None
        if arr.shape != self.action_space.shape:
            raise ValueError(f"action: expected shape {self.action_space.shape} (left {self._sizes[0]} + right "
                             f"{self._sizes[1]}), got {arr.shape}")
        halves = dict(zip(ARMS, np.split(arr, [self._sizes[0]])))
        commands = {}
        for arm, env in self.arms.items():
            with _naming(arm):
                commands[arm] = env.command(halves[arm])
        return commands

    def _advance(self) -> None:
        """Lockstep: each simulation one period on, so both arms see the same clock (one world: once)."""
        for arm, env in self.arms.items():
            with _naming(arm):
                env.wait_period()
            if self.one_world:
                break

    def _send(self, commands: dict[str, ArmCommand]) -> None:
        """Both targets at once: in one request when one process serves both arms, else the right arm's from a
        worker thread and the left arm's from this one."""
        if self._served_as is not None:
            served = {self._served_as[arm]: command for arm, command in commands.items()}
            self.command_skews.append(self.arms["left"].send_pair(served))
            return
        right = self._sender.submit(self._send_one, "right", commands["right"])
        left_done = self._send_one("left", commands["left"])
        right_done = right.result()
        self.command_skews.append(abs(right_done - left_done))

    def _send_one(self, arm: str, command: ArmCommand) -> float:
        with _naming(arm):
            self.arms[arm].send(command)
        return self._clock()

    def _merge(self, per_arm: dict[str, dict]) -> dict:
        obs = {"state": {arm_key(arm, k): v for arm, o in per_arm.items() for k, v in o["state"].items()}}
        images = {arm_key(arm, k): v for arm, o in per_arm.items() for k, v in o.get("images", {}).items()}
        if images:
            obs["images"] = images
        return obs


@contextlib.contextmanager
def _naming(arm: str):
    """Bad input and robot-client failures re-raised with the arm's name in front."""
    try:
        yield
    except RobotClientError as err:
        raise RobotClientError(f"{arm} arm: {err}") from err
    except ValueError as err:
        raise ValueError(f"{arm} arm: {err}") from err


def robot_env_under(env: gym.Env) -> FrankaEnv | DualFrankaEnv | None:
    """The robot env (one arm or two) under ``env``'s wrappers, or None when ``env`` wraps another env."""
    base = env.unwrapped
    return base if isinstance(base, (FrankaEnv, DualFrankaEnv)) else None
