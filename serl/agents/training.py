"""A minimal single-process training loop for gymnasium envs with flat observations (used by tests
and benchmarks; the actor/learner runtime has its own loop)."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import jax
import numpy as np

from serl.agents.sac import SACAgent, SACConfig
from serl.data.feature_cache import FeatureCache
from serl.data.replay import ReplayBuffer
from serl.data.transition import make_transition


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    env_id: str = "Pendulum-v1"
    total_steps: int = 5000
    random_steps: int = 500
    batch_size: int = 256
    eval_episodes: int = 5
    seed: int = 0


def _flat(obs) -> dict:
    return obs if isinstance(obs, dict) else {"state": np.asarray(obs, np.float32)}


def evaluate(agent: SACAgent, env: gym.Env, episodes: int, seed: int) -> float:
    """Mean undiscounted return of the deterministic policy."""
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done, total = False, 0.0
        while not done:
            action = np.asarray(agent.eval_actions(_flat(obs)))
            obs, reward, terminated, truncated, _ = env.step(action * env.action_space.high)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def train(config: SACConfig, loop: LoopConfig) -> tuple[SACAgent, dict]:
    """Train SAC on a Box-action gymnasium env; returns the agent and {'initial_return', 'final_return'}."""
    env, eval_env = gym.make(loop.env_id), gym.make(loop.env_id)
    obs, _ = env.reset(seed=loop.seed)
    env.action_space.seed(loop.seed)
    action_dim = env.action_space.shape[0]
    agent = SACAgent.create(loop.seed, _flat(obs), action_dim, config)
    buffer = ReplayBuffer(_flat(obs), action_dim, loop.total_steps, seed=loop.seed)
    source = buffer
    if agent.caches_features:
        source = FeatureCache.from_config(buffer, agent.backbone_views, config, loop.seed)
    initial = evaluate(agent, eval_env, loop.eval_episodes, seed=10_000)
    rng = jax.random.PRNGKey(loop.seed + 1)
    for step in range(loop.total_steps):
        if step < loop.random_steps:
            action = env.action_space.sample() / env.action_space.high
        else:
            rng, key = jax.random.split(rng)
            action = np.asarray(agent.sample_actions(_flat(obs), key))
        next_obs, reward, terminated, truncated, _ = env.step(action * env.action_space.high)
        buffer.insert(make_transition(_flat(obs), action, reward, _flat(next_obs),
                                      terminated=terminated, truncated=truncated))
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
        if step >= loop.random_steps:
            agent, _ = agent.update(source.sample(loop.batch_size * config.utd_ratio))
    final = evaluate(agent, eval_env, loop.eval_episodes, seed=10_000)
    return agent, {"initial_return": initial, "final_return": final}
