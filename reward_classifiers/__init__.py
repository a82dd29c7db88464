"""Learned reward classifiers: label frames, train a success classifier, evaluate it, use it as the reward.

``data`` (labelled frames from HDF5 episodes), ``twin`` (ground-truth labelled rollouts), ``live`` (labels
keyed during teleop), ``model``, ``train``, ``evaluate`` (report), ``checkpoint``, ``runtime``
(``ClassifierReward`` gymnasium wrapper), ``cli`` and ``labelling`` (the ``serl classifier`` commands).
"""

from reward_classifiers.checkpoint import CheckpointError, ClassifierCheckpoint, load_checkpoint, save_checkpoint
from reward_classifiers.data import LabelledFrames, frames_from_episodes, load_frames
from reward_classifiers.model import CameraInput, ClassifierSpec, EncoderConfig
from reward_classifiers.runtime import ClassifierReward, RewardClassifier

__all__ = [
    "CameraInput", "CheckpointError", "ClassifierCheckpoint", "ClassifierReward", "ClassifierSpec", "EncoderConfig",
    "LabelledFrames", "RewardClassifier", "frames_from_episodes", "load_checkpoint", "load_frames", "save_checkpoint",
]
