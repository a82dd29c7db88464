"""``build_env``: the env of an ``EnvConfig``, with its wrappers.

``serl train``, ``serl learner``, ``serl actor``, ``serl eval`` and ``serl record-demos`` all build their env here.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from serl.devices import make_teleop
from serl.devices.base import Teleop
from serl.envs.bimanual import get_bimanual_task, is_bimanual, make_bimanual_sim_env, with_bimanual_overrides
from serl.envs.dual_franka_env import DualFrankaEnv
from serl.envs.franka_env import FrankaEnv
from serl.envs.intervention import InterventionWrapper
from serl.envs.rewards import make_reward
from serl.envs.tasks import get_task, make_sim_env, with_overrides
from serl.envs.wrappers import (FlattenState, GripperPenalty, InterventionInfo, QuatToEuler, RelativeFrame,
                                default_wrappers)
from serl.runtime.env_config import EnvConfig


GYM_STATE_KEY = "state"
"""The one state entry of a ``gym:`` env's observation, in demo files and in the flat layout."""


@dataclasses.dataclass(frozen=True)
class ObservationWrappers:
    """Which observation wrappers ``build_env`` puts over a ``FrankaEnv`` task."""

    relative_frame: bool = True
    """``RelativeFrame``: poses and actions in the frame of the pose at reset."""
    euler: bool = True
    """``QuatToEuler``: robot poses as xyz + euler."""
    flat: bool = True
    """``FlattenState``: the flat dict the agent and the replay buffers take; False keeps the nested
    ``{"state": {...}, "images": {...}}`` observation the demo files store."""


def build_env(cfg: EnvConfig, seed: int | None = None, teleop: "str | Teleop" = "none", *,
              teleop_options: Mapping[str, Any] | None = None,
              observations: ObservationWrappers = ObservationWrappers(), console: Any = None,
              robot: Any = None) -> gym.Env:
    """The task env with its observation wrappers, reward wrappers and, with a teleop device, interventions.

    ``robot_url`` None runs the MuJoCo twin in-process (LocalRobot); otherwise the env talks to a
    robot server over HTTP. ``gym:<id>`` tasks are gymnasium envs with flat observations. A teleop
    device (``make_teleop(teleop, env=..., **teleop_options)``, or an open ``Teleop`` another env owns) adds the
    ``InterventionWrapper`` outermost.
    ``console`` (a ``ConsoleHub``) adds the page's success/failure marks (``ConsoleReward``, under the
    interventions) and is the ``browser`` teleop's input. ``robot``: the ``RobotClient`` of an env built before,
    for a second task on the same robot (a task cycle); that env keeps owning it.
    """
    if cfg.task_module:
        import_task_module(cfg.task_module)
    env = _task_env(cfg, seed, robot)
    env = _with_observation_wrappers(env, observations)
    if cfg.grasp_penalty > 0:
        env = GripperPenalty(env, cfg.grasp_penalty, mode="info")
    if cfg.reward_classifier is not None:
        from reward_classifiers.runtime import ClassifierReward  # the classifier's model code loads JAX and flax

        env = ClassifierReward(env, cfg.reward_classifier, k=cfg.classifier_k)
    options = dict(teleop_options or {})
    if console is not None:
        from serl.console.reward import ConsoleMarks, ConsoleReward

        env = ConsoleReward(env, ConsoleMarks())
        if teleop == "browser":
            options.setdefault("hub", console)
    if isinstance(teleop, Teleop):
        env = InterventionWrapper(env, teleop, owns_teleop=False)
    elif teleop != "none":
        env = InterventionWrapper(env, make_teleop(teleop, env=env, **options))
    return env


def check_task(cfg: EnvConfig) -> None:
    """One-line ValueError when the task, its module or its overrides are wrong (before a run writes anything)."""
    if cfg.task_module:
        try:
            import_task_module(cfg.task_module)
        except ModuleNotFoundError as err:
            raise ValueError(f"env.task_module: {err}") from None
    overrides = cfg.override_dict()
    if cfg.task.startswith("gym:"):
        try:
            gym.spec(cfg.task[len("gym:"):])
        except gym.error.Error as err:
            raise ValueError(f"unknown gymnasium env {cfg.task!r}: {err}") from None
    elif is_bimanual(cfg.task):
        with_bimanual_overrides(get_bimanual_task(cfg.task, pixels=cfg.pixels), **overrides)
    else:
        with_overrides(get_task(cfg.task, pixels=cfg.pixels), **overrides)


def import_task_module(name: str) -> None:
    """Import a module (dotted name) or a .py file that registers extra tasks."""
    if name.endswith(".py"):
        path = Path(name).resolve()
        if not path.exists():
            raise ValueError(f"env.task_module: file {name} not found")
        module_name = f"serl_task_module_{path.stem}"
        if module_name in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    else:
        importlib.import_module(name)


def _task_env(cfg: EnvConfig, seed: int | None, robot=None) -> gym.Env:
    """The env as the task defines it: a ``FrankaEnv`` (nested observations) or a ``gym:`` env (flat); with
    ``robot``, a ``FrankaEnv`` on that client, which its owner closes."""
    overrides = cfg.override_dict()
    if cfg.task.startswith("gym:"):
        if robot is not None:
            raise ValueError(f"env.task: {cfg.task} is a gymnasium env; only robot tasks share a robot")
        return _make_gym_env(cfg.task[len("gym:"):], seed, overrides)
    if is_bimanual(cfg.task):
        if cfg.robot_url is not None or robot is not None:
            raise ValueError(f"env.task: the two-arm task {cfg.task} runs on the bimanual twin in this process "
                             "(no --robot-url); real arms: DualFrankaEnv over two robot clients (docs/env.md)")
        return make_bimanual_sim_env(cfg.task, seed=seed, pixels=cfg.pixels, **overrides)
    if cfg.robot_url is None and robot is None:
        return make_sim_env(cfg.task, pixels=cfg.pixels, seed=seed, **overrides)
    task = with_overrides(get_task(cfg.task, pixels=cfg.pixels), **overrides)
    if robot is not None:
        return FrankaEnv(robot, task, reward_fn=make_reward(task), owns_client=False)
    if cfg.robot_api != "native":
        from serl.envs.serl_client import serl_env

        return serl_env(cfg.robot_url, cfg.robot_api, task, classifier=cfg.reward_classifier is not None)
    from serl.envs.http_client import HttpRobotClient  # pulls in FastAPI via the server modules; remote envs only

    client = HttpRobotClient(cfg.robot_url, token=cfg.robot_token) if cfg.robot_token else HttpRobotClient(cfg.robot_url)
    return FrankaEnv(client, task, reward_fn=make_reward(task))


def _make_gym_env(env_id: str, seed: int | None, overrides: dict) -> gym.Env:
    """Any gymnasium env with a Box observation and action: observation {"state": obs}, actions in [-1, 1]."""
    env = gym.make(env_id, **overrides)
    if not isinstance(env.observation_space, gym.spaces.Box) or not isinstance(env.action_space, gym.spaces.Box):
        raise ValueError(f"env.task: gym:{env_id} needs Box observation and action spaces")
    ones = np.ones(env.action_space.shape, np.float32)
    env = gym.wrappers.RescaleAction(env, -ones, ones)
    state_space = gym.spaces.Box(-np.inf, np.inf, env.observation_space.shape, np.float32)
    env = gym.wrappers.TransformObservation(
        env, lambda obs: {"state": np.asarray(obs, np.float32)}, gym.spaces.Dict({"state": state_space})
    )
    if seed is not None:
        env.action_space.seed(seed)
    return env


def _with_observation_wrappers(env: gym.Env, observations: ObservationWrappers) -> gym.Env:
    space = env.observation_space
    if isinstance(space, gym.spaces.Dict) and isinstance(space.spaces.get("state"), gym.spaces.Box):
        # a gym: env yields the flat layout already; the stored layout names its one entry "state"
        return env if observations.flat else gym.wrappers.TransformObservation(
            env, lambda obs: {"state": {GYM_STATE_KEY: obs["state"]}},
            gym.spaces.Dict({"state": gym.spaces.Dict({GYM_STATE_KEY: space["state"]})}))
    if isinstance(env.unwrapped, DualFrankaEnv):  # each arm in its own base frame, positions only: nothing to turn
        return InterventionInfo(FlattenState(env)) if observations.flat else env
    if observations.flat:
        return default_wrappers(env, relative=observations.relative_frame, euler=observations.euler)
    if observations.relative_frame:
        env = RelativeFrame(env)
    if observations.euler:
        env = QuatToEuler(env)
    return env


def flat_state_keys(env: gym.Env) -> list[str]:
    """Names of the flat state's entries in order (``FlattenState.state_layout``); a gym: env's one entry
    is ``state`` (what its demos store under observations/state)."""
    layer = env
    while isinstance(layer, gym.Wrapper):
        if isinstance(layer, FlattenState):
            return list(layer.state_layout)
        layer = layer.env
    space = env.observation_space
    return [GYM_STATE_KEY] if isinstance(space, gym.spaces.Dict) and "state" in space.spaces else []


def observation_example(env: gym.Env) -> dict[str, np.ndarray]:
    """One zero observation with the env's flat layout (what the agent is created from)."""
    return {k: np.zeros(s.shape, s.dtype) for k, s in env.observation_space.spaces.items()}


def space_signature(env: gym.Env) -> dict[str, Any]:
    """Shapes and dtypes of observations and actions, for logs and the run config."""
    obs = {k: [list(s.shape), str(s.dtype)] for k, s in env.observation_space.spaces.items()}
    return {"observation": obs, "action": [list(env.action_space.shape), str(env.action_space.dtype)]}
