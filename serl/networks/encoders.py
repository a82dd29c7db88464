"""Image encoders: ResNet-10 with GroupNorm (SERL's backbone), a small conv net, spatial heads,
and `EncodedObservation`, which encodes every camera and appends the proprio state."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from serl.networks.mlp import default_init

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_image(images: jnp.ndarray) -> jnp.ndarray:
    """uint8 (..., H, W, 3) -> float32 with ImageNet mean/std normalisation."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


class ResNetBlock(nn.Module):
    filters: int
    strides: int = 1
    groups: int = 4

    @nn.compact
    def __call__(self, x):
        residual = x
        y = nn.Conv(self.filters, (3, 3), (self.strides, self.strides), use_bias=False, name="conv1")(x)
        y = nn.relu(nn.GroupNorm(self.groups, name="norm1")(y))
        y = nn.Conv(self.filters, (3, 3), use_bias=False, name="conv2")(y)
        y = nn.GroupNorm(self.groups, name="norm2")(y)
        if residual.shape != y.shape:
            residual = nn.Conv(self.filters, (1, 1), (self.strides, self.strides), use_bias=False, name="proj_conv")(
                residual
            )
            residual = nn.GroupNorm(self.groups, name="proj_norm")(residual)
        return nn.relu(residual + y)


class ResNet10(nn.Module):
    """ResNet-v1 with stage sizes (1,1,1,1), basic blocks and GroupNorm; returns the spatial map
    before pooling, (B, H/32, W/32, 8*num_filters)."""

    stage_sizes: Sequence[int] = (1, 1, 1, 1)
    num_filters: int = 64
    groups: int = 4

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        x = normalize_image(images)
        x = nn.Conv(self.num_filters, (7, 7), (2, 2), use_bias=False, name="conv_init")(x)
        x = nn.relu(nn.GroupNorm(self.groups, name="norm_init")(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
        for i, size in enumerate(self.stage_sizes):
            for j in range(size):
                strides = 2 if i > 0 and j == 0 else 1
                x = ResNetBlock(self.num_filters * 2**i, strides, self.groups, name=f"stage{i}_block{j}")(x)
        return x


class SmallConv(nn.Module):
    """Four stride-2 3x3 convolutions (32/64/128/256) with ReLU; returns the spatial map."""

    features: Sequence[int] = (32, 64, 128, 256)

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        x = images.astype(jnp.float32) / 255.0
        for i, f in enumerate(self.features):
            x = nn.relu(nn.Conv(f, (3, 3), (2, 2), name=f"conv{i}")(x))
        return x


class SpatialLearnedEmbeddings(nn.Module):
    """Learned spatial weighting: `num_features` maps of shape HxW per channel -> (B, C*num_features)."""

    num_features: int = 8

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        h, w, c = x.shape[-3:]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (h, w, c, self.num_features))
        out = jnp.einsum("bhwc,hwcf->bcf", x, kernel)
        return out.reshape(x.shape[0], c * self.num_features)


BACKBONES = ("resnet10", "small")


def is_frame(images) -> bool:
    """Camera frames have 3 (RGB) channels; a backbone's output has many more."""
    return images.shape[-1] == 3


def make_backbone(backbone: str, resnet_filters: int = 64, name: str | None = "backbone") -> nn.Module:
    """The backbone module by name; ``ImageEncoder`` calls it under the name "backbone"."""
    if backbone == "resnet10":
        return ResNet10(num_filters=resnet_filters, name=name)
    if backbone == "small":
        return SmallConv(name=name)
    raise ValueError(f"encoder: unknown backbone {backbone!r}, expected one of {BACKBONES}")


class ImageEncoder(nn.Module):
    """Backbone (optionally frozen) -> spatial embedding or mean pooling -> Dense -> LayerNorm -> tanh.

    Takes frames (B, H, W, 3), uint8 or float in [0, 255], or, with a frozen backbone, the backbone's output for
    them (B, h, w, c), computed once elsewhere (a replay feature cache): an input without exactly 3 channels is
    such features, and the backbone is then not run.
    """

    backbone: str = "resnet10"
    freeze_backbone: bool = False
    pooling: str = "spatial_learned"
    num_spatial_features: int = 8
    latent_dim: int = 256
    resnet_filters: int = 64

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        backbone = make_backbone(self.backbone, self.resnet_filters)
        if is_frame(images):
            x = backbone(images)
        elif self.freeze_backbone:
            x = images.astype(jnp.float32)
        else:
            raise ValueError("encoder: precomputed backbone features need a frozen backbone "
                             f"(got input of shape {images.shape[1:]} with freeze_backbone=False)")
        if self.freeze_backbone:
            x = jax.lax.stop_gradient(x)
        if self.pooling == "spatial_learned":
            x = SpatialLearnedEmbeddings(self.num_spatial_features, name="spatial")(x)
        elif self.pooling == "avg":
            x = jnp.mean(x, axis=(-3, -2))
        else:
            raise ValueError(f"pooling: unknown {self.pooling!r}, expected 'spatial_learned' or 'avg'")
        x = nn.Dense(self.latent_dim, kernel_init=default_init(), name="head_dense")(x)
        return nn.tanh(nn.LayerNorm(name="head_norm")(x))


class EncodedObservation(nn.Module):
    """Encodes each camera of a flat observation dict and concatenates the proprio state after encoding.

    `observations` is `{"state": (B, d), "<camera>": (B, H, W, 3) uint8, ...}`. With `share_encoder`
    one ImageEncoder (one set of params) serves every camera; otherwise each camera has its own,
    named `encoder_<camera>`. `proprio_latent_dim=None` appends the raw state vector.
    """

    image_keys: Sequence[str] = ()
    state_key: str = "state"
    backbone: str = "resnet10"
    share_encoder: bool = False
    freeze_backbone: bool = False
    pooling: str = "spatial_learned"
    latent_dim: int = 256
    resnet_filters: int = 64
    proprio_latent_dim: int | None = None

    @nn.compact
    def __call__(self, observations: dict) -> jnp.ndarray:
        def make(name):
            return ImageEncoder(
                self.backbone, self.freeze_backbone, self.pooling, latent_dim=self.latent_dim,
                resnet_filters=self.resnet_filters, name=name,
            )

        missing = [key for key in self.image_keys if key not in observations]
        if missing:
            raise KeyError(f"observations: camera {missing[0]!r} is missing (the encoder was built for cameras "
                           f"{list(self.image_keys)}; the observation has {sorted(observations)})")
        shared = make("encoder_shared") if self.share_encoder and self.image_keys else None
        features = []
        for key in self.image_keys:
            encoder = shared if shared is not None else make(f"encoder_{key}")
            features.append(encoder(observations[key]))
        if self.state_key in observations:
            state = observations[self.state_key].astype(jnp.float32)
            if self.proprio_latent_dim is not None:
                state = nn.Dense(self.proprio_latent_dim, kernel_init=default_init(), name="proprio_dense")(state)
                state = nn.tanh(nn.LayerNorm(name="proprio_norm")(state))
            features.append(state)
        if not features:
            raise ValueError(f"observations: no image key of {list(self.image_keys)} and no {self.state_key!r}")
        return jnp.concatenate(features, axis=-1)
