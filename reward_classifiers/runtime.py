"""Run-time use of a trained classifier: ``RewardClassifier`` (load + predict one step) and the gymnasium
wrapper ``ClassifierReward`` (reward 1 and episode end after ``k`` consecutive steps above the threshold)."""

from __future__ import annotations

import functools
import os
from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from reward_classifiers.checkpoint import ClassifierCheckpoint, load_checkpoint
from reward_classifiers.model import ClassifierSpec, build_model


class RewardClassifier:
    """A loaded checkpoint with a jitted single-step predictor (compiled on construction)."""

    def __init__(self, checkpoint: ClassifierCheckpoint, threshold: float | None = None):
        import jax

        self.checkpoint = checkpoint
        self.spec: ClassifierSpec = checkpoint.spec
        self.threshold = float(checkpoint.threshold if threshold is None else threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold: must be in [0, 1], got {self.threshold}")
        self.params = jax.device_put(checkpoint.params)
        self._predict = _single_step_predictor(self.spec)
        self.probability({c.name: np.zeros((*c.image_size, 3), np.uint8) for c in self.spec.cameras})

    @classmethod
    def load(cls, path: str | os.PathLike, threshold: float | None = None) -> "RewardClassifier":
        return cls(load_checkpoint(path), threshold)

    def probability(self, images: Mapping[str, np.ndarray]) -> float:
        """Success probability for one step's frames ``{camera: (H, W, 3) uint8}``."""
        inputs = self.spec.preprocess(images)
        return float(self._predict(self.params, {k: v[None] for k, v in inputs.items()}))

    def check_observation_space(self, space: gym.Space) -> None:
        """ValueError naming the camera when the env's cameras or image sizes differ from the training data."""
        cameras = image_spaces(space)
        missing = [c.name for c in self.spec.cameras if c.name not in cameras]
        if missing:
            raise ValueError(
                f"reward classifier: camera(s) {missing} it was trained on are not in the env's observations "
                f"(env cameras: {sorted(cameras)}; classifier cameras: {list(self.spec.camera_names)})"
            )
        for cam in self.spec.cameras:
            shape = tuple(cameras[cam.name].shape)
            if shape != (*cam.image_size, 3):
                raise ValueError(
                    f"reward classifier: camera {cam.name!r} gives {shape} frames, the classifier was trained on "
                    f"{(*cam.image_size, 3)} (set the task's CameraSpec size/crop to the training ones, or retrain)"
                )


@functools.lru_cache(maxsize=8)
def _single_step_predictor(spec: ClassifierSpec):
    """One jitted predictor per spec, so several wrappers (or reloads) of one classifier compile once."""
    import jax

    model = build_model(spec)
    return jax.jit(lambda params, images: jax.nn.sigmoid(model.apply({"params": params}, images))[0])


def image_spaces(space: gym.Space) -> dict[str, gym.spaces.Box]:
    """Camera name → Box, for FrankaEnv's nested ``{"images": {...}}`` and the flat ``{"state", <camera>...}`` layout."""
    if not isinstance(space, gym.spaces.Dict):
        return {}
    if isinstance(space.spaces.get("images"), gym.spaces.Dict):
        return dict(space.spaces["images"].spaces)
    return {k: s for k, s in space.spaces.items()
            if isinstance(s, gym.spaces.Box) and len(s.shape) == 3 and s.shape[-1] == 3 and s.dtype == np.uint8}


def observation_images(obs: Mapping[str, Any]) -> Mapping[str, np.ndarray]:
    images = obs.get("images")
    return images if isinstance(images, Mapping) else obs


class ClassifierReward(gym.Wrapper):
    """Reward from a success classifier.

    Each step the probability goes into ``info["classifier_prob"]``; once it has been >= the threshold
    for ``k`` consecutive steps the step gets ``success_reward``, ``info["succeed"]`` and ``terminated``.
    The env's own reward is replaced (kept and added with ``keep_env_reward``); the env's own
    ``succeed`` flag moves to ``info["env_succeed"]``.
    """

    def __init__(
        self,
        env: gym.Env,
        classifier: RewardClassifier | str | os.PathLike,
        *,
        k: int = 1,
        threshold: float | None = None,
        success_reward: float = 1.0,
        keep_env_reward: bool = False,
        terminate: bool = True,
    ):
        super().__init__(env)
        if int(k) < 1:
            raise ValueError(f"k: consecutive steps must be >= 1, got {k}")
        if not isinstance(classifier, RewardClassifier):
            classifier = RewardClassifier.load(classifier, threshold)
        elif threshold is not None:
            classifier = RewardClassifier(classifier.checkpoint, threshold)
        classifier.check_observation_space(env.observation_space)
        self.classifier = classifier
        self.k = int(k)
        self.success_reward = float(success_reward)
        self.keep_env_reward = keep_env_reward
        self.terminate = terminate
        self.streak = 0

    @property
    def threshold(self) -> float:
        return self.classifier.threshold

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.streak = 0
        return obs, {**info, "classifier_prob": self.classifier.probability(observation_images(obs))}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        prob = self.classifier.probability(observation_images(obs))
        self.streak = self.streak + 1 if prob >= self.classifier.threshold else 0
        success = self.streak >= self.k
        info = dict(info)
        info["env_succeed"] = bool(info.get("succeed", False))
        info["succeed"] = success
        info["classifier_prob"] = prob
        info["classifier_streak"] = self.streak
        info["reward_source"] = "classifier"
        out_reward = (float(reward) if self.keep_env_reward else 0.0) + (self.success_reward if success else 0.0)
        if success and self.terminate:
            terminated = True
            truncated = False
        return obs, out_reward, bool(terminated), bool(truncated), info
