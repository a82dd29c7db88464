"""Build the env the actor runs (twin in-process or a robot server) with the flat observation layout."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from serl.runtime.config import EnvConfig


def build_env(cfg: EnvConfig, seed: int | None = None, teleop: str = "none") -> gym.Env:
    """The task env with observations flattened to ``{"state": (d,), <camera>: HxWx3}``.

    ``robot_url`` None runs the MuJoCo twin in-process (LocalRobot); otherwise the env talks to a
    robot server over HTTP. A teleop device adds the intervention wrapper.
    """
    overrides = cfg.override_dict()
    if cfg.task_module:
        import_task_module(cfg.task_module)
    if cfg.task.startswith("gym:"):
        env = _make_gym_env(cfg.task[len("gym:"):], seed, overrides)
    elif cfg.robot_url is None:
        from serl.envs.tasks import make_sim_env

        env = make_sim_env(cfg.task, pixels=cfg.pixels, seed=seed, **overrides)
    else:
        env = _make_remote_env(cfg, overrides)
    env = flatten(env)
    if cfg.grasp_penalty > 0:
        from serl.envs.wrappers import GripperPenalty

        env = GripperPenalty(env, cfg.grasp_penalty, mode="info")
    if cfg.reward_classifier is not None:
        from reward_classifiers.runtime import ClassifierReward

        env = ClassifierReward(env, cfg.reward_classifier, k=cfg.classifier_k)
    if teleop != "none":
        env = _with_intervention(env, teleop)
    return env


def import_task_module(name: str) -> None:
    """Import a module (dotted name) or a .py file that registers extra tasks."""
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

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


def _make_remote_env(cfg: EnvConfig, overrides: dict) -> gym.Env:
    import dataclasses

    from serl.envs.franka_env import FrankaEnv
    from serl.envs.http_client import HttpRobotClient
    from serl.envs.tasks import get_task

    task = get_task(cfg.task, pixels=cfg.pixels) if _accepts(get_task, "pixels") else get_task(cfg.task)
    if overrides:
        task = dataclasses.replace(task, **overrides)
    client = HttpRobotClient(cfg.robot_url, token=cfg.robot_token) if cfg.robot_token else HttpRobotClient(cfg.robot_url)
    return FrankaEnv(client, task)


def _accepts(fn, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def flatten(env: gym.Env) -> gym.Env:
    """The env helper's default learning wrappers, unless the env already yields flat observations."""
    space = env.observation_space
    if isinstance(space, gym.spaces.Dict) and isinstance(space.spaces.get("state"), gym.spaces.Box):
        return env
    from serl.envs.wrappers import default_wrappers

    return default_wrappers(env)


def _with_intervention(env: gym.Env, teleop: str) -> gym.Env:
    from serl.devices import make_teleop
    from serl.envs.intervention import InterventionWrapper

    return InterventionWrapper(env, make_teleop(teleop, env=env))


def observation_example(env: gym.Env) -> dict[str, np.ndarray]:
    """One zero observation with the env's flat layout (what the agent is created from)."""
    return {k: np.zeros(s.shape, s.dtype) for k, s in env.observation_space.spaces.items()}


def space_signature(env: gym.Env) -> dict[str, Any]:
    """Shapes and dtypes of observations and actions, for logs and the run config."""
    obs = {k: [list(s.shape), str(s.dtype)] for k, s in env.observation_space.spaces.items()}
    return {"observation": obs, "action": [list(env.action_space.shape), str(env.action_space.dtype)]}
