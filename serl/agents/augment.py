"""DrQ random-shift augmentation, run inside the jitted update."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from serl.networks.encoders import is_frame


def shift(images: jnp.ndarray, offsets: jnp.ndarray, pad: int = 4) -> jnp.ndarray:
    """Edge-pad each image by `pad` and crop back at its (row, column) offset in [0, 2 * pad].

    images: (B, H, W, C), offsets: (B, 2) integers; the result has the images' shape and dtype.
    """
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def random_shift(rng, images: jnp.ndarray, pad: int = 4) -> jnp.ndarray:
    """`shift` at an independent uniform random offset per sample."""
    return shift(images, jax.random.randint(rng, (images.shape[0], 2), 0, 2 * pad + 1), pad)


def augment_observations(rng, observations: dict, image_keys: Sequence[str], pad: int = 4) -> dict:
    """Random shift for every camera frame in a flat observation dict; other entries pass through, and so do
    cameras given as cached backbone features, whose views were shifted before the backbone ran."""
    keys = [k for k in image_keys if is_frame(observations[k])]
    if not keys:
        return observations
    out = dict(observations)
    for key, key_rng in zip(keys, jax.random.split(rng, len(keys))):
        out[key] = random_shift(key_rng, observations[key], pad)
    return out
