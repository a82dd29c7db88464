"""SAC / RLPD / grasp-critic losses as plain functions of arrays, in the order an update uses them.

Everything here is pure maths on already-computed network outputs so each formula can be checked
by hand; `serl/agents/sac.py` does the network calls and gradient steps.

Gripper actions (the action entries at ``SACConfig.gripper_indices`` when the grasp critic is on): -1 = close,
0 = stay, +1 = open, stored as floats; each indexes as round(a) + 1 -> {0, 1, 2}, and k grippers choose one of
3^k joint actions, the first gripper the most significant base-3 digit (HIL-SERL's dual arm: 3 x 3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from serl.networks.gaussian_policy import gaussian_log_prob

GRIPPER_CLOSE, GRIPPER_STAY, GRIPPER_OPEN = -1.0, 0.0, 1.0
NUM_GRIPPER_ACTIONS = 3


def subset_indices(rng, num_qs: int, num_min_qs: int) -> jnp.ndarray:
    """Indices of `num_min_qs` distinct ensemble members drawn uniformly (one subset per minibatch)."""
    return jax.random.choice(rng, num_qs, (num_min_qs,), replace=False)


def td_target(rewards, masks, discount, next_q, next_log_prob=None, temperature=0.0, backup_entropy=False):
    """r + gamma * mask * (Q'(s', a') [- alpha * log pi(a'|s')] with the entropy term only if backup_entropy)."""
    if backup_entropy:
        next_q = next_q - temperature * next_log_prob
    return rewards + discount * masks * next_q


def critic_loss(qs: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    """Mean squared TD error over ensemble members and batch: qs (N, B), target (B,)."""
    return jnp.mean((qs - jax.lax.stop_gradient(target)[None]) ** 2)


def actor_loss(qs: jnp.ndarray, log_prob: jnp.ndarray, temperature) -> jnp.ndarray:
    """E[alpha * log pi(a|s) - mean_ensemble Q(s, a)], with a sampled from the current policy."""
    return jnp.mean(temperature * log_prob - jnp.mean(qs, axis=0))


def bc_loss(policy_actions: jnp.ndarray, demo_actions: jnp.ndarray, demo_rows: jnp.ndarray) -> jnp.ndarray:
    """Squared error (mean over action entries) between the policy's deterministic actions and the stored ones,
    averaged over demo rows only (demo_rows (B,) is 1 on a demo/intervention row); 0 without demo rows."""
    per_row = jnp.mean((policy_actions - demo_actions) ** 2, axis=-1)
    return jnp.sum(per_row * demo_rows) / jnp.maximum(jnp.sum(demo_rows), 1.0)


def bc_nll_loss(mean: jnp.ndarray, log_std: jnp.ndarray, demo_actions: jnp.ndarray, demo_rows: jnp.ndarray,
                bound: float = 0.97) -> jnp.ndarray:
    """Negative log-likelihood of the stored actions under the policy's pre-tanh Gaussian (mean over action entries),
    averaged over demo rows only; actions are clipped to ±`bound` before atanh so a saturated demo stays finite.
    Unlike `bc_loss` it trains the spread too: the policy narrows where the demos agree."""
    pre_tanh = jnp.arctanh(jnp.clip(demo_actions, -bound, bound))
    per_row = -gaussian_log_prob(pre_tanh, mean, log_std) / mean.shape[-1]
    return jnp.sum(per_row * demo_rows) / jnp.maximum(jnp.sum(demo_rows), 1.0)


def grasp_margin_loss(q_values: jnp.ndarray, action_index: jnp.ndarray, demo_rows: jnp.ndarray,
                      margin: float) -> jnp.ndarray:
    """DQfD's large-margin term on demo rows: max_a [Q(s, a) + margin * (a != a_demo)] - Q(s, a_demo), so the
    demonstrated gripper choice wins by at least `margin`; averaged over demo rows (0 without any)."""
    margins = margin * (1.0 - jax.nn.one_hot(action_index, q_values.shape[-1]))
    q_taken = jnp.take_along_axis(q_values, action_index[:, None], axis=-1)[:, 0]
    per_row = jnp.max(q_values + margins, axis=-1) - q_taken
    return jnp.sum(per_row * demo_rows) / jnp.maximum(jnp.sum(demo_rows), 1.0)


def temperature_loss(temperature, entropy, target_entropy) -> jnp.ndarray:
    """Lagrangian for the entropy constraint: alpha * (H - H_target); lowers alpha while H > H_target."""
    return temperature * (jax.lax.stop_gradient(entropy) - target_entropy)


def gripper_action_to_index(gripper: jnp.ndarray) -> jnp.ndarray:
    """-1/0/+1 gripper action (any float) -> index 0/1/2 (close/stay/open)."""
    return (jnp.clip(jnp.round(gripper), -1, 1) + 1).astype(jnp.int32)


def gripper_index_to_action(index: jnp.ndarray) -> jnp.ndarray:
    return index.astype(jnp.float32) - 1.0


def joint_gripper_index(grippers: jnp.ndarray) -> jnp.ndarray:
    """(B, k) gripper actions -> (B,) index of the joint action in [0, 3^k): sum_i digit_i * 3^(k-1-i)."""
    k = grippers.shape[-1]
    weights = NUM_GRIPPER_ACTIONS ** jnp.arange(k - 1, -1, -1)
    return jnp.sum(gripper_action_to_index(grippers) * weights, axis=-1)


def joint_gripper_actions(index: jnp.ndarray, k: int) -> jnp.ndarray:
    """(B,) joint index -> (B, k) gripper actions in {-1, 0, +1} (the inverse of ``joint_gripper_index``)."""
    weights = NUM_GRIPPER_ACTIONS ** jnp.arange(k - 1, -1, -1)
    return gripper_index_to_action((index[..., None] // weights) % NUM_GRIPPER_ACTIONS)


def grasp_td_target(rewards, masks, discount, next_q_online, next_q_target) -> jnp.ndarray:
    """Double DQN: a* = argmax_a Q_online(s', a); target = r + gamma * mask * Q_target(s', a*)."""
    best = jnp.argmax(next_q_online, axis=-1)
    next_q = jnp.take_along_axis(next_q_target, best[:, None], axis=-1)[:, 0]
    return rewards + discount * masks * next_q


def grasp_critic_loss(q_values: jnp.ndarray, action_index: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    """MSE between Q(s, a_taken) (q_values (B, 3^k)) and the Double-DQN target."""
    q_taken = jnp.take_along_axis(q_values, action_index[:, None], axis=-1)[:, 0]
    return jnp.mean((q_taken - jax.lax.stop_gradient(target)) ** 2)
