"""The agent as the runtime sees it: creation from an env, and policy weights as msgpack bytes (no pickle)."""

from __future__ import annotations

from typing import Mapping

import flax.serialization
import jax
import numpy as np

from serl.agents.sac import SACAgent, SACConfig


def create_agent(seed: int, obs_example: Mapping[str, np.ndarray], action_dim: int, config: SACConfig) -> SACAgent:
    """A fresh agent; actor and learner built with the same seed start from the same weights."""
    return SACAgent.create(jax.random.PRNGKey(seed), obs_example, action_dim, config)


def policy_params(agent: SACAgent) -> dict:
    """What acting needs: the policy head, the (critic-trained) encoder, and the grasp critic if any."""
    params = {"actor": agent.actor.params, "encoder": agent.critic.params["encoder"]}
    if agent.grasp is not None:
        params["grasp"] = agent.grasp.params
    return params


def with_policy_params(agent: SACAgent, params: Mapping) -> SACAgent:
    """The agent with its acting parameters replaced (structure must match :func:`policy_params`)."""
    critic = agent.critic.replace(params={**agent.critic.params, "encoder": params["encoder"]})
    agent = agent.replace(actor=agent.actor.replace(params=params["actor"]), critic=critic)
    if agent.grasp is not None:
        agent = agent.replace(grasp=agent.grasp.replace(params=params["grasp"]))
    return agent


def encode_weights(agent: SACAgent, meta: Mapping[str, int | float]) -> bytes:
    """Policy parameters plus learner counters as msgpack bytes (flax.serialization)."""
    params = jax.device_get(policy_params(agent))
    return flax.serialization.msgpack_serialize(
        {"params": flax.serialization.to_state_dict(params), "meta": {k: float(v) for k, v in meta.items()}}
    )


def decode_weights(agent: SACAgent, blob: bytes) -> tuple[SACAgent, dict[str, float]]:
    """Apply weights from :func:`encode_weights` to ``agent``; ValueError when they do not fit or are not finite."""
    try:
        payload = flax.serialization.msgpack_restore(bytes(blob))
        current = policy_params(agent)
        params = flax.serialization.from_state_dict(current, payload["params"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"weights: do not match this agent's policy ({err})") from err
    mismatched = [
        jax.tree_util.keystr(path)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(current), jax.tree_util.tree_leaves(params))
        if np.shape(a) != np.shape(b)
    ]
    if mismatched:
        raise ValueError(f"weights: shapes differ from this agent's policy at {mismatched[:3]}")
    # a learner fed bad data publishes NaN/inf weights; acting on them would send garbage to the robot
    not_finite = [
        jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if not np.all(np.isfinite(np.asarray(leaf)))
    ]
    if not_finite:
        raise ValueError(f"weights: {len(not_finite)} parameter arrays are not finite (NaN or inf), "
                         f"e.g. {', '.join(not_finite[:3])}")
    return with_policy_params(agent, params), dict(payload.get("meta", {}))
