"""The frozen-backbone feature cache: updates on cached views equal updates that recompute the backbone on the
same shifted frames; a buffer rebuilt from disk gets the same features and batches; bad settings are refused."""

import dataclasses

import jax
import numpy as np
import pytest

from serl.agents import SACAgent, SACConfig
from serl.agents.augment import shift
from serl.data.feature_cache import FeatureCache
from serl.data.replay import ReplayBuffer
from serl.data.transition import make_transition
from serl.networks import save_backbone_params

SIZE = 24


def _obs(rng):
    return {"state": rng.normal(size=3).astype(np.float32),
            "front": rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8),
            "wrist": rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8)}


def _filled_buffer(steps=40, capacity=64, seed=0):
    rng = np.random.default_rng(seed)
    buffer = ReplayBuffer(_obs(rng), 4, capacity, seed=seed)
    obs = _obs(rng)
    for t in range(steps):
        nxt = _obs(rng)
        buffer.insert(make_transition(obs, rng.uniform(-1, 1, 4).astype(np.float32), float(t % 3 == 0), nxt,
                                      terminated=False, truncated=t % 10 == 9))
        obs = _obs(rng) if t % 10 == 9 else nxt
    return buffer


def _agent(**overrides):
    cfg = SACConfig(hidden_dims=(16,), num_qs=2, utd_ratio=2, encoder="small", encoder_latent_dim=8,
                    freeze_backbone=True, feature_dtype="float32", augment_pad=3, **overrides)
    return SACAgent.create(0, _obs(np.random.default_rng(9)), 4, cfg)


def test_cached_update_equals_update_recomputing_the_backbone_on_the_same_views():
    agent = _agent()
    assert agent.caches_features
    buffer = _filled_buffer()
    cache = FeatureCache(buffer, agent.backbone_views, num_views=3, pad=3, seed=5, dtype="float32")
    ids = buffer.sample_indices(16)
    state = buffer.rng.bit_generator.state
    cached = cache.gather(ids)
    buffer.rng.bit_generator.state = state
    views = buffer.rng.integers(0, 3, (2, len(ids)))  # the draw gather made
    frames = buffer.gather(ids)
    obs_ids, next_ids = (buffer.obs_frame[ids % buffer.capacity], buffer.next_frame[ids % buffer.capacity])
    for part, frame_ids, view in (("observations", obs_ids, views[0]), ("next_observations", next_ids, views[1])):
        offsets = cache.offsets(frame_ids)[np.arange(len(ids)), view]
        for cam in ("front", "wrist"):
            frames[part][cam] = np.asarray(shift(frames[part][cam], offsets, 3))
    # the recomputing agent gets the shifted frames as they are: its own random shift is off
    plain = agent.replace(config=dataclasses.replace(agent.config, augment=False))
    after_cached, m_cached = agent.update(cached)
    after_plain, m_plain = plain.update(frames)
    for key in ("critic_loss", "actor_loss", "q"):
        np.testing.assert_allclose(float(m_cached[key]), float(m_plain[key]), rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(after_cached.critic.params),
                    jax.tree_util.tree_leaves(after_plain.critic.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(after_cached.actor.params),
                    jax.tree_util.tree_leaves(after_plain.actor.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    # a different view is a different input: the comparison above could fail
    other = dict(cached, observations=dict(cached["observations"], front=cached["observations"]["front"][::-1]))
    assert not np.isclose(float(agent.update(other)[1]["critic_loss"]), float(m_cached["critic_loss"]), rtol=1e-4)


def test_views_are_a_function_of_the_frame_and_a_reloaded_buffer_samples_the_same(tmp_path):
    agent = _agent()
    buffer = _filled_buffer(steps=30)
    cache = FeatureCache(buffer, agent.backbone_views, num_views=2, pad=3, seed=1)
    assert cache.sync() == buffer.num_frames and cache.sync() == 0  # encoded once
    buffer.save(tmp_path / "buffer.npz")
    first = cache.sample(32)
    reloaded = ReplayBuffer.load(tmp_path / "buffer.npz")
    again = FeatureCache(reloaded, agent.backbone_views, num_views=2, pad=3, seed=1).sample(32)
    for part in ("observations", "next_observations"):
        for key, value in first[part].items():
            np.testing.assert_array_equal(value, again[part][key])
    assert first["observations"]["front"].dtype == np.float16
    np.testing.assert_array_equal(cache.offsets(np.arange(5)), cache.offsets(np.arange(5)))
    assert not np.array_equal(cache.offsets(np.arange(5)), FeatureCache(
        buffer, agent.backbone_views, num_views=2, pad=3, seed=2).offsets(np.arange(5)))


def test_only_frames_still_held_are_encoded_and_overwritten_slots_are_re_encoded():
    calls = []

    def encode(camera, frames, offsets):
        calls.append(len(frames))
        return np.broadcast_to(frames[:, None, :2, :2, :1].astype(np.float32), (len(frames), offsets.shape[1], 2, 2, 1))

    buffer = _filled_buffer(steps=10, capacity=8)
    cache = FeatureCache(buffer, encode, num_views=2, pad=1)
    calls.clear()
    encoded = cache.sync()
    assert encoded <= buffer.frame_capacity  # frames already gone from the ring are never encoded
    rng = np.random.default_rng(3)
    obs = _obs(rng)
    buffer.insert(make_transition(obs, np.zeros(4, np.float32), 0.0, _obs(rng), terminated=True, truncated=False))
    calls.clear()
    assert cache.sync() == 2 and calls == [2, 2]  # both new frames, one call per camera
    batch = cache.gather(np.array([buffer.num_inserted - 1]))
    np.testing.assert_array_equal(batch["observations"]["front"][0, :, :, 0], obs["front"][:2, :2, 0])


def test_bad_settings_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="feature_views"):
        SACConfig(freeze_backbone=True, feature_views=0)
    with pytest.raises(ValueError, match="feature_dtype"):
        SACConfig(feature_dtype="int8")
    buffer = _filled_buffer(steps=3)
    with pytest.raises(ValueError, match="num_views"):
        FeatureCache(buffer, _agent().backbone_views, num_views=-1, pad=3)
    state_only = ReplayBuffer({"state": np.zeros(3, np.float32)}, 4, 8)
    with pytest.raises(ValueError, match="no camera"):
        FeatureCache(state_only, _agent().backbone_views, num_views=2, pad=3)
    agent = _agent()
    obs = _obs(np.random.default_rng(0))
    del obs["wrist"]
    with pytest.raises(KeyError, match="camera 'wrist' is missing"):
        agent.eval_actions(obs)
    (tmp_path / "weights.npz").write_text("not a zip file")
    with pytest.raises(ValueError, match="not a .npz or flax msgpack"):
        _agent(pretrained_backbone=str(tmp_path / "weights.npz"))
    save_backbone_params(tmp_path / "other.npz", {"conv0": {"kernel": np.zeros((5, 5, 3, 7), np.float32)}})
    with pytest.raises(ValueError, match="does not fit encoder_front/backbone"):
        _agent(pretrained_backbone=str(tmp_path / "other.npz"))
    with pytest.raises(ValueError, match="precomputed backbone features need a frozen backbone"):
        unfrozen = SACAgent.create(0, _obs(np.random.default_rng(9)), 4, dataclasses.replace(agent.config,
                                                                                          freeze_backbone=False))
        features = {"state": np.zeros((2, 3), np.float32), "front": np.zeros((2, 2, 2, 256), np.float32),
                    "wrist": np.zeros((2, 2, 2, 256), np.float32)}
        unfrozen.eval_actions(features)
