"""Networks: MLPs, critic ensembles, tanh-Gaussian actor, image encoders."""

from serl.networks.gaussian_policy import TanhGaussianActor, sample_tanh_gaussian
from serl.networks.encoders import EncodedObservation, ImageEncoder, ResNet10, SmallConv, SpatialLearnedEmbeddings
from serl.networks.mlp import MLP, CriticEnsemble, DiscreteCritic, StateActionValue
from serl.networks.pretrained import (from_serl_resnet10, insert_backbone_params, load_backbone_params,
                                     save_backbone_params)

__all__ = [
    "MLP", "CriticEnsemble", "DiscreteCritic", "StateActionValue", "TanhGaussianActor", "sample_tanh_gaussian",
    "EncodedObservation", "ImageEncoder", "ResNet10", "SmallConv", "SpatialLearnedEmbeddings",
    "from_serl_resnet10", "insert_backbone_params", "load_backbone_params", "save_backbone_params",
]
