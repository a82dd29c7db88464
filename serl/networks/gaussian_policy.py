"""Tanh-squashed diagonal Gaussian policy and its sampling maths."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from serl.networks.mlp import MLP, default_init

LOG_2 = 0.6931471805599453


class TanhGaussianActor(nn.Module):
    """Returns (mean, log_std) of the pre-tanh Gaussian; actions are tanh(sample) in [-1, 1]."""

    hidden_dims: Sequence[int]
    action_dim: int
    activation: str = "relu"
    use_layer_norm: bool = False
    log_std_min: float = -20.0
    log_std_max: float = 2.0

    @nn.compact
    def __call__(self, features: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        x = MLP(self.hidden_dims, self.activation, self.use_layer_norm, activate_final=True)(features)
        mean = nn.Dense(self.action_dim, kernel_init=default_init())(x)
        log_std = nn.Dense(self.action_dim, kernel_init=default_init())(x)
        return mean, jnp.clip(log_std, self.log_std_min, self.log_std_max)


def tanh_log_det_jacobian(pre_tanh: jnp.ndarray) -> jnp.ndarray:
    """log|d tanh(x)/dx| summed over the last axis, in a form that stays finite for large |x|."""
    return jnp.sum(2.0 * (LOG_2 - pre_tanh - jax.nn.softplus(-2.0 * pre_tanh)), axis=-1)


def gaussian_log_prob(x: jnp.ndarray, mean: jnp.ndarray, log_std: jnp.ndarray) -> jnp.ndarray:
    """Diagonal Gaussian log density summed over the last axis."""
    z = (x - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2.0 * jnp.pi), axis=-1)


def sample_tanh_gaussian(rng, mean: jnp.ndarray, log_std: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Reparameterised sample of tanh(N(mean, std)) and its log probability."""
    pre_tanh = mean + jnp.exp(log_std) * jax.random.normal(rng, mean.shape, mean.dtype)
    log_prob = gaussian_log_prob(pre_tanh, mean, log_std) - tanh_log_det_jacobian(pre_tanh)
    return jnp.tanh(pre_tanh), log_prob
