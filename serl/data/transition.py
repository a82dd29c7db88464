"""One env step as the replay buffers, the transport and the learner take it, and the one function that builds it."""

from __future__ import annotations

from typing import Mapping, TypedDict

import numpy as np

Observation = Mapping[str, np.ndarray]
"""A flat observation: {"state": (d,) float32, <camera>: (H, W, 3) uint8}."""


class _StepFields(TypedDict):
    observations: Observation
    actions: np.ndarray
    rewards: np.float32
    masks: np.float32
    dones: bool
    next_observations: Observation


class Transition(_StepFields, total=False):
    """``masks`` = 1 - terminated (what the critic bootstraps with), ``dones`` = terminated or truncated
    (the episode ends here); ``intervened`` and ``grasp_penalty`` only where the source has them."""

    intervened: bool
    grasp_penalty: np.float32


TRANSITION_KEYS = tuple(_StepFields.__annotations__)


def make_transition(observation: Observation, action, reward: float, next_observation: Observation, *,
                    terminated: bool, truncated: bool, intervened: bool | None = None,
                    grasp_penalty: float | None = None) -> Transition:
    """A ``Transition``. SAC bootstraps through a truncation (time limit, a recording cut short) but not
    through a terminal state, so ``masks`` follows ``terminated`` only; ``dones`` marks the episode boundary
    for the buffers and the learner's episode count."""
    transition = Transition(
        observations=observation,
        actions=np.asarray(action, dtype=np.float32),
        rewards=np.float32(np.squeeze(reward)),
        masks=np.float32(0.0 if terminated else 1.0),
        dones=bool(terminated or truncated),
        next_observations=next_observation,
    )
    if intervened is not None:
        transition["intervened"] = bool(intervened)
    if grasp_penalty is not None:
        transition["grasp_penalty"] = np.float32(grasp_penalty)
    return transition
