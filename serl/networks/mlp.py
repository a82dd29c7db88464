"""Multilayer perceptrons and the critic ensemble."""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable] = {
    "tanh": nn.tanh,
    "relu": nn.relu,
    "gelu": nn.gelu,
    "elu": nn.elu,
    "silu": nn.silu,
}


def get_activation(name: str) -> Callable:
    """Look up an activation by name; a clear error for unknown names."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: unknown {name!r}, expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def default_init(scale: float = 1.0):
    return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


class MLP(nn.Module):
    """Dense layers with optional LayerNorm after each hidden Dense (before the activation)."""

    hidden_dims: Sequence[int]
    activation: str = "relu"
    use_layer_norm: bool = False
    activate_final: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        act = get_activation(self.activation)
        for i, size in enumerate(self.hidden_dims):
            x = nn.Dense(size, kernel_init=default_init())(x)
            if i + 1 < len(self.hidden_dims) or self.activate_final:
                if self.use_layer_norm:
                    x = nn.LayerNorm()(x)
                x = act(x)
        return x


class StateActionValue(nn.Module):
    """Q(s, a) from features and action: MLP then a scalar head."""

    hidden_dims: Sequence[int]
    activation: str = "relu"
    use_layer_norm: bool = False

    @nn.compact
    def __call__(self, features: jnp.ndarray, actions: jnp.ndarray) -> jnp.ndarray:
        x = jnp.concatenate([features, actions], axis=-1)
        x = MLP(self.hidden_dims, self.activation, self.use_layer_norm, activate_final=True)(x)
        return nn.Dense(1, kernel_init=default_init())(x)[..., 0]


class CriticEnsemble(nn.Module):
    """N independent Q-functions evaluated in one vectorised call; output shape (N, batch)."""

    hidden_dims: Sequence[int]
    num_qs: int = 2
    activation: str = "relu"
    use_layer_norm: bool = False

    @nn.compact
    def __call__(self, features: jnp.ndarray, actions: jnp.ndarray) -> jnp.ndarray:
        ensemble = nn.vmap(
            StateActionValue,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num_qs,
        )
        return ensemble(self.hidden_dims, self.activation, self.use_layer_norm)(features, actions)


class DiscreteCritic(nn.Module):
    """Q-values over a small discrete action set (the grasp critic): output (batch, num_actions)."""

    hidden_dims: Sequence[int]
    num_actions: int = 3
    activation: str = "relu"
    use_layer_norm: bool = False

    @nn.compact
    def __call__(self, features: jnp.ndarray) -> jnp.ndarray:
        x = MLP(self.hidden_dims, self.activation, self.use_layer_norm, activate_final=True)(features)
        return nn.Dense(self.num_actions, kernel_init=default_init())(x)
