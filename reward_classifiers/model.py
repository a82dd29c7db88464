"""The success classifier: one image encoder per camera (serl.networks), a small MLP head, one logit.

``ClassifierSpec`` is everything needed to rebuild the model and feed it: the cameras it was trained on
(name, image size the env delivers, optional crop, model input size) and the encoder settings. It is
stored in the checkpoint next to the params and the decision threshold.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from robot_servers.cameras.base import CropResize
from serl.networks.encoders import BACKBONES, EncodedObservation


@dataclasses.dataclass(frozen=True)
class CameraInput:
    """One camera as the classifier sees it: the env's frame (``image_size``), cropped, resized to ``input_size``."""

    name: str
    image_size: tuple[int, int] = (128, 128)
    crop: tuple[int, int, int, int] | None = None  # (top, left, height, width) in env-frame pixels
    input_size: tuple[int, int] | None = None  # None: the (cropped) frame size

    def __post_init__(self):
        if not self.name:
            raise ValueError("camera name: empty")
        if len(self.image_size) != 2 or min(self.image_size) <= 0:
            raise ValueError(f"camera {self.name!r}: image_size must be (H, W) > 0, got {self.image_size}")
        if self.crop is not None:
            top, left, height, width = self.crop
            if top < 0 or left < 0 or height <= 0 or width <= 0 or top + height > self.image_size[0] or (
                left + width > self.image_size[1]
            ):
                raise ValueError(f"camera {self.name!r}: crop {self.crop} outside its {self.image_size} image")

    @property
    def model_size(self) -> tuple[int, int]:
        if self.input_size is not None:
            return tuple(self.input_size)
        return tuple(self.crop[2:]) if self.crop is not None else tuple(self.image_size)

    def preprocess(self, frames: np.ndarray) -> np.ndarray:
        """(…, H, W, 3) uint8 env frames → (…, h, w, 3) uint8 model input; ValueError on a size mismatch."""
        frames = np.asarray(frames)
        if frames.shape[-3:] != (*self.image_size, 3) or frames.dtype != np.uint8:
            raise ValueError(
                f"camera {self.name!r}: expected uint8 frames of shape {(*self.image_size, 3)}, "
                f"got {frames.dtype} {frames.shape[-3:]}"
            )
        if self.crop is None and self.model_size == tuple(self.image_size):
            return frames
        transform = CropResize(self.crop, self.model_size)
        flat = frames.reshape(-1, *frames.shape[-3:])
        out = np.stack([transform.apply(frame) for frame in flat])
        return out.reshape(*frames.shape[:-3], *out.shape[-3:])


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Image encoder of the classifier (see serl.networks.encoders.ImageEncoder)."""

    backbone: str = "resnet10"
    """resnet10 (GroupNorm ResNet-10, SERL's backbone) or small (four stride-2 convs)."""
    resnet_filters: int = 16
    """ResNet-10 width; 64 is the standard (pretrained) size, 16 keeps CPU inference under 5 ms for two 128x128 cameras."""
    freeze_backbone: bool = True
    """Train only the spatial embedding and head (use with pretrained backbone weights)."""
    pooling: str = "spatial_learned"
    latent_dim: int = 64
    hidden_dim: int = 64
    dropout: float = 0.1
    share_encoder: bool = False

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"encoder.backbone: {self.backbone!r} is not one of {BACKBONES}")
        if self.pooling not in ("spatial_learned", "avg"):
            raise ValueError(f"encoder.pooling: {self.pooling!r} is not 'spatial_learned' or 'avg'")
        if min(self.resnet_filters, self.latent_dim, self.hidden_dim) <= 0:
            raise ValueError("encoder: resnet_filters, latent_dim and hidden_dim must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"encoder.dropout: must be in [0, 1), got {self.dropout}")


@dataclasses.dataclass(frozen=True)
class ClassifierSpec:
    cameras: tuple[CameraInput, ...]
    encoder: EncoderConfig = EncoderConfig()

    def __post_init__(self):
        if not self.cameras:
            raise ValueError("cameras: the classifier needs at least one camera")
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"cameras: names must be unique, got {names}")

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ClassifierSpec":
        def tup(value):
            return None if value is None else tuple(int(v) for v in value)

        cameras = tuple(
            CameraInput(c["name"], tup(c["image_size"]), tup(c.get("crop")), tup(c.get("input_size")))
            for c in data["cameras"]
        )
        return cls(cameras, EncoderConfig(**data.get("encoder", {})))

    def preprocess(self, images: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Env frames by camera name (batched or not) → model inputs; ValueError naming a missing camera."""
        missing = [c.name for c in self.cameras if c.name not in images]
        if missing:
            raise ValueError(f"images: missing camera(s) {missing}; the classifier was trained on {list(self.camera_names)}")
        return {c.name: c.preprocess(images[c.name]) for c in self.cameras}


class SuccessClassifier(nn.Module):
    """Images of every camera → encoders → MLP → one success logit per sample."""

    camera_names: Sequence[str]
    encoder: EncoderConfig

    @nn.compact
    def __call__(self, images: Mapping[str, jnp.ndarray], train: bool = False) -> jnp.ndarray:
        cfg = self.encoder
        features = EncodedObservation(
            image_keys=tuple(self.camera_names), backbone=cfg.backbone, share_encoder=cfg.share_encoder,
            freeze_backbone=cfg.freeze_backbone, pooling=cfg.pooling, latent_dim=cfg.latent_dim,
            resnet_filters=cfg.resnet_filters, name="encoder",
        )(dict(images))
        x = nn.Dropout(cfg.dropout, deterministic=not train)(features)
        x = nn.relu(nn.LayerNorm()(nn.Dense(cfg.hidden_dim)(x)))
        x = nn.Dropout(cfg.dropout, deterministic=not train)(x)
        return nn.Dense(1)(x)[..., 0]


def build_model(spec: ClassifierSpec) -> SuccessClassifier:
    return SuccessClassifier(spec.camera_names, spec.encoder)


def init_params(spec: ClassifierSpec, seed: int = 0) -> dict:
    """Fresh params for ``spec`` (one dummy sample per camera)."""
    dummy = {c.name: np.zeros((1, *c.model_size, 3), np.uint8) for c in spec.cameras}
    return build_model(spec).init(jax.random.PRNGKey(seed), dummy)["params"]
