"""``serl eval``: a checkpoint's deterministic policy, N episodes, success rate and return as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from serl.agents.checkpoint import Checkpointer
from serl.envs.dual_franka_env import robot_env_under
from serl.runtime import enable_compilation_cache
from serl.runtime.config import EvalConfig, LearnerConfig, from_dict
from serl.runtime.envs import build_env, observation_example
from serl.runtime.policy import create_agent

__all__ = ["EvalConfig", "evaluate", "evaluate_policy", "load_run"]


def load_run(run_dir: Path) -> LearnerConfig:
    """The learner config a run wrote beside its checkpoints."""
    path = run_dir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"run_dir: {run_dir} has no config.json (is it a run directory of serl learner/train?)")
    data = json.loads(path.read_text())
    data = {k: v for k, v in data.items() if k not in ("spaces", "config_hash")}
    return from_dict(LearnerConfig, data)


def evaluate_policy(agent, env, episodes: int, seed: int) -> dict:
    """Deterministic rollouts; success = any step with ``info['succeed']``. A robot fault (a reflex, a safety
    stop) ends its episode as a failure, counted in ``robot_faults``, and the robot is recovered for the next."""
    returns, successes, lengths, faults = [], [], [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done, total, success, length = False, 0.0, False, 0
        while not done:
            action = np.asarray(agent.eval_actions(obs), dtype=np.float32)
            try:
                obs, reward, terminated, truncated, info = env.step(action)
            except RuntimeError as err:
                faults.append(str(err))
                base = robot_env_under(env)
                if base is None:
                    raise
                base.recover()
                break
            total += float(reward)
            success |= bool(info.get("succeed", False))
            length += 1
            done = terminated or truncated
        returns.append(total)
        successes.append(success)
        lengths.append(length)
    return {
        "episodes": episodes,
        "success_rate": float(np.mean(successes)),
        "mean_return": float(np.mean(returns)),
        "mean_length": float(np.mean(lengths)),
        "robot_faults": len(faults),
        **({"first_fault": faults[0]} if faults else {}),
    }


def evaluate(cfg: EvalConfig) -> dict:
    """Restore the run's agent (latest or ``cfg.step``) and evaluate it; prints one JSON line."""
    enable_compilation_cache()
    run = load_run(cfg.run_dir)
    env = build_env(cfg.env or run.env, seed=cfg.seed)
    try:
        template = create_agent(run.run.seed, observation_example(env), int(np.prod(env.action_space.shape)), run.agent)
        checkpointer = Checkpointer(cfg.run_dir / "checkpoints")
        try:
            step = cfg.step if cfg.step is not None else checkpointer.latest_step()
            if step is None:
                raise FileNotFoundError(f"run_dir: no checkpoint in {cfg.run_dir / 'checkpoints'}")
            agent, _, meta = checkpointer.restore(template, step)
        finally:
            checkpointer.close()
        result = {"run_dir": str(cfg.run_dir), "checkpoint": step, **evaluate_policy(agent, env, cfg.episodes, cfg.seed)}
        result["env_steps"] = meta.get("counters", {}).get("env_steps")
    finally:
        env.close()
    print(json.dumps(result), flush=True)
    return result
