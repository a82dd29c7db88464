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


class InvalidTransition(ValueError):
    """A transition that does not fit the agreed schema; ``field`` names the offending entry."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field


class TransitionSpec:
    """What a transition must look like to enter a buffer: keys, shapes, dtypes, finite and bounded values.

    ``max_abs`` bounds every float entry (observations, rewards); actions are held to ``action_low`` /
    ``action_high`` when given (the env's action space), else to finite values.
    """

    ACTION_SLACK = 1e-4  # float rounding on the actor's side of a clip to the bounds

    def __init__(self, observation_example: Observation, action_dim: int, *, action_low=None, action_high=None,
                 max_abs: float = 1e6):
        self.observations = {k: (np.asarray(v).shape, np.asarray(v).dtype) for k, v in observation_example.items()}
        self.action_dim = int(action_dim)
        self.action_low = None if action_low is None else np.broadcast_to(np.asarray(action_low, np.float32), (action_dim,))
        self.action_high = None if action_high is None else np.broadcast_to(np.asarray(action_high, np.float32), (action_dim,))
        self.max_abs = float(max_abs)

    def check(self, transition: Mapping) -> None:
        """Raise InvalidTransition naming the first entry that is off."""
        if not isinstance(transition, Mapping):
            raise InvalidTransition("transition", f"expected a map, got {type(transition).__name__}")
        for key in TRANSITION_KEYS:
            if key not in transition:
                raise InvalidTransition(key, "missing")
        for field in ("observations", "next_observations"):
            obs = transition[field]
            if not isinstance(obs, Mapping) or set(obs) != set(self.observations):
                got = sorted(obs) if isinstance(obs, Mapping) else type(obs).__name__
                raise InvalidTransition(field, f"expected keys {sorted(self.observations)}, got {got}")
            for key, (shape, dtype) in self.observations.items():
                self._check_array(f"{field}.{key}", obs[key], shape, dtype)
        self._check_array("actions", transition["actions"], (self.action_dim,), np.dtype(np.float32))
        actions = np.asarray(transition["actions"], np.float32)
        if self.action_low is not None and np.any(actions < self.action_low - self.ACTION_SLACK):
            raise InvalidTransition("actions", f"below the action space's low bound: {actions.tolist()}")
        if self.action_high is not None and np.any(actions > self.action_high + self.ACTION_SLACK):
            raise InvalidTransition("actions", f"above the action space's high bound: {actions.tolist()}")
        for key in ("rewards", "masks", "grasp_penalty"):
            if key in transition:
                self._check_array(key, transition[key], (), np.dtype(np.float32))
        if float(np.asarray(transition["masks"])) not in (0.0, 1.0):
            raise InvalidTransition("masks", f"must be 0 or 1, got {transition['masks']}")
        if np.asarray(transition["dones"]).shape != () or np.asarray(transition["dones"]).dtype.kind not in "biuf":
            raise InvalidTransition("dones", f"must be a boolean scalar, got {transition['dones']!r}")

    def _check_array(self, field: str, value, shape: tuple, dtype: np.dtype) -> None:
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise InvalidTransition(field, f"expected numbers, got dtype {array.dtype}")
        if (array.size != 1) if shape == () else (array.shape != shape):
            raise InvalidTransition(field, f"expected shape {shape}, got {array.shape}")
        if dtype == np.uint8 and array.dtype != np.uint8:
            raise InvalidTransition(field, f"expected uint8 (a camera frame), got {array.dtype}")
        if array.dtype.kind == "f":
            if not np.all(np.isfinite(array)):
                raise InvalidTransition(field, "not finite (NaN or inf)")
            if array.size and float(np.max(np.abs(array))) > self.max_abs:
                raise InvalidTransition(field, f"magnitude {float(np.max(np.abs(array))):.3g} beyond {self.max_abs:.3g}")
