"""Loading pretrained backbone weights from a local file (msgpack via flax.serialization, or .npz)."""

from __future__ import annotations

import os
from typing import Any

import flax.serialization
import flax.traverse_util
import jax
import numpy as np


def save_backbone_params(path: str | os.PathLike, params: Any) -> None:
    """Write a backbone params tree as .msgpack (flax.serialization) or .npz ('/'-joined keys)."""
    path = os.fspath(path)
    params = jax.tree_util.tree_map(np.asarray, flax.serialization.to_state_dict(params))
    if path.endswith(".npz"):
        flat = flax.traverse_util.flatten_dict(params, sep="/")
        np.savez(path, **flat)
    else:
        with open(path, "wb") as f:
            f.write(flax.serialization.msgpack_serialize(params))


def load_backbone_params(path: str | os.PathLike) -> dict:
    """Read a params tree saved by `save_backbone_params` (or any msgpack/npz of the same layout)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"pretrained backbone: no file at {path!r}")
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as data:
                params = flax.traverse_util.unflatten_dict({k: data[k] for k in data.files}, sep="/")
        else:
            with open(path, "rb") as f:
                params = flax.serialization.msgpack_restore(f.read())
    except Exception as err:  # noqa: BLE001 - zipfile, numpy and msgpack each raise their own types
        raise ValueError(f"pretrained backbone: {path!r} is not a .npz or flax msgpack params file ({err})") from err
    if not isinstance(params, dict) or not params:
        raise ValueError(f"pretrained backbone: {path!r} holds no params tree (got {type(params).__name__})")
    return params


_SERL_BLOCK_NAMES = {"Conv_0": "conv1", "MyGroupNorm_0": "norm1", "Conv_1": "conv2", "MyGroupNorm_1": "norm2",
                     "conv_proj": "proj_conv", "norm_proj": "proj_norm"}


def from_serl_resnet10(params: dict) -> dict:
    """SERL's ResNet-10 params tree (``conv_init``, ``norm_init``, ``ResNetBlock_<i>/Conv_0``, ...) renamed to this
    suite's ``ResNet10`` layout (``stage<i>_block0/conv1``, ...); ValueError naming a key it does not know."""
    out = {}
    for name, sub in params.items():
        if name in ("conv_init", "norm_init"):
            out[name] = sub
        elif name.startswith("ResNetBlock_") and name[len("ResNetBlock_"):].isdigit():
            unknown = sorted(set(sub) - set(_SERL_BLOCK_NAMES))
            if unknown:
                raise ValueError(f"SERL ResNet-10 params: unknown layers {unknown} in {name}")
            out[f"stage{int(name[len('ResNetBlock_'):])}_block0"] = {_SERL_BLOCK_NAMES[k]: v for k, v in sub.items()}
        else:
            raise ValueError(f"SERL ResNet-10 params: unknown entry {name!r} (expected conv_init, norm_init, "
                             "ResNetBlock_0..3)")
    return out


def _mismatch(expected: dict, given: dict) -> str | None:
    exp = flax.traverse_util.flatten_dict(expected, sep="/")
    got = flax.traverse_util.flatten_dict(given, sep="/")
    missing = sorted(set(exp) - set(got))
    extra = sorted(set(got) - set(exp))
    if missing or extra:
        return f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected keys {extra[:5]}"
    for key in sorted(exp):
        if np.shape(exp[key]) != np.shape(got[key]):
            return f"shape of {key!r}: expected {np.shape(exp[key])}, file has {np.shape(got[key])}"
    return None


def insert_backbone_params(encoder_params: dict, backbone_params: dict, source: str = "file") -> dict:
    """Return a copy of `encoder_params` (an EncodedObservation's params) with every
    `encoder_*/backbone` subtree replaced by `backbone_params`; ValueError on any mismatch."""
    encoder_params = flax.core.unfreeze(encoder_params)
    targets = [k for k, v in encoder_params.items() if k.startswith("encoder_") and "backbone" in v]
    if not targets:
        raise ValueError("pretrained backbone: the encoder has no image backbone to load weights into")
    out = dict(encoder_params)
    for name in targets:
        problem = _mismatch(encoder_params[name]["backbone"], backbone_params)
        if problem:
            raise ValueError(f"pretrained backbone from {source} does not fit {name}/backbone: {problem}")
        sub = dict(encoder_params[name])
        sub["backbone"] = jax.tree_util.tree_map(
            lambda ref, new: np.asarray(new, dtype=np.asarray(ref).dtype),
            encoder_params[name]["backbone"],
            backbone_params,
        )
        out[name] = sub
    return out
