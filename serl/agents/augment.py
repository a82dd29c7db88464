"""DrQ random-shift augmentation, run inside the jitted update."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def random_shift(rng, images: jnp.ndarray, pad: int = 4) -> jnp.ndarray:
    """Edge-pad each image by `pad` and crop back at an independent random offset per sample.

    images: (B, H, W, C), any dtype; the result has the same shape and dtype.
    """
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    offsets = jax.random.randint(rng, (b, 2), 0, 2 * pad + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def augment_observations(rng, observations: dict, image_keys: Sequence[str], pad: int = 4) -> dict:
    """Random shift for every camera in a flat observation dict; other entries pass through."""
    if not image_keys:
        return observations
    out = dict(observations)
    for key, key_rng in zip(image_keys, jax.random.split(rng, len(image_keys))):
        out[key] = random_shift(key_rng, observations[key], pad)
    return out
