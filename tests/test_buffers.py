"""Replay buffer: frames stored once, episode boundaries, ring overwrite, 50/50 mixing, atomic save/load."""

import os

import numpy as np
import pytest

from serl.data.replay import MixedSampler, ReplayBuffer, concat_batches


def _obs(step_id: int, episode: int, size=8):
    """Observation whose every entry encodes (episode, step) so pairings can be checked."""
    frame = np.full((size, size, 3), (episode * 50 + step_id) % 256, np.uint8)
    frame[0, 0, 0] = episode % 256
    return {"state": np.array([episode, step_id], np.float32), "wrist": frame, "front": frame[::-1].copy()}


def _fill(buffer, episodes, length, start_episode=0):
    for e in range(start_episode, start_episode + episodes):
        for t in range(length):
            last = t == length - 1
            buffer.insert({
                "observations": _obs(t, e), "actions": np.array([e, t], np.float32), "rewards": float(t),
                "masks": 1.0, "dones": last, "next_observations": _obs(t + 1, e),
            })


def _assert_consistent(batch):
    ep, step = batch["observations"]["state"][:, 0], batch["observations"]["state"][:, 1]
    np.testing.assert_array_equal(batch["next_observations"]["state"][:, 0], ep)
    np.testing.assert_array_equal(batch["next_observations"]["state"][:, 1], step + 1)
    np.testing.assert_array_equal(batch["actions"][:, 0], ep)
    for i in range(len(ep)):
        e, t = int(ep[i]), int(step[i])
        np.testing.assert_array_equal(batch["observations"]["wrist"][i], _obs(t, e)["wrist"])
        np.testing.assert_array_equal(batch["next_observations"]["wrist"][i], _obs(t + 1, e)["wrist"])
        np.testing.assert_array_equal(batch["next_observations"]["front"][i], _obs(t + 1, e)["front"])


def test_frames_stored_once_and_pairs_never_cross_episodes():
    buffer = ReplayBuffer(_obs(0, 0), 2, capacity=100)
    _fill(buffer, episodes=5, length=7)
    assert len(buffer) == 35
    assert buffer.num_frames == 35 + 5  # one frame per step plus each episode's final next obs
    batch = buffer.sample(200)
    _assert_consistent(batch)
    assert set(batch["observations"]["state"][:, 1].astype(int)) == set(range(7))


def test_interleaved_streams_stay_correct():
    buffer = ReplayBuffer(_obs(0, 0), 2, capacity=50)
    for t in range(5):  # two actors' episodes interleaved step by step
        for e in (1, 2):
            buffer.insert({"observations": _obs(t, e), "actions": np.array([e, t], np.float32), "rewards": 0.0,
                           "masks": 1.0, "dones": False, "next_observations": _obs(t + 1, e)})
    _assert_consistent(buffer.sample(100))


def test_ring_overwrite_and_short_episodes_retire_oldest():
    buffer = ReplayBuffer(_obs(0, 0), 2, capacity=20, frame_slack=0.1)
    _fill(buffer, episodes=30, length=2)  # 1-step-long-ish episodes need 1.5 frames per transition
    assert 0 < len(buffer) <= 20
    _assert_consistent(buffer.sample(300))
    eps = buffer.sample(300)["observations"]["state"][:, 0]
    assert eps.min() >= 30 - 10  # only the newest transitions remain


def test_memory_per_transition_two_128px_cameras():
    example = {"state": np.zeros(20, np.float32), "wrist": np.zeros((128, 128, 3), np.uint8),
               "front": np.zeros((128, 128, 3), np.uint8)}
    capacity = 2000
    buffer = ReplayBuffer(example, 7, capacity)
    one_obs_frames = 2 * 128 * 128 * 3
    assert buffer.nbytes / capacity <= 1.1 * one_obs_frames


def test_bad_transition_is_rejected_and_nothing_stored():
    buffer = ReplayBuffer(_obs(0, 0), 2, capacity=10)
    good = {"observations": _obs(0, 0), "actions": np.zeros(2, np.float32), "rewards": 0.0, "masks": 1.0,
            "dones": False, "next_observations": _obs(1, 0)}
    with pytest.raises(ValueError, match="actions"):
        buffer.insert({**good, "actions": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="wrist"):
        buffer.insert({**good, "next_observations": {**_obs(1, 0), "wrist": np.zeros((4, 4, 3), np.uint8)}})
    with pytest.raises(ValueError, match="masks: missing"):
        buffer.insert({k: v for k, v in good.items() if k != "masks"})
    assert len(buffer) == 0 and buffer.num_frames == 0
    with pytest.raises(ValueError, match="empty"):
        buffer.sample(1)


def test_mixed_sampler_ratio():
    online = ReplayBuffer(_obs(0, 0), 2, capacity=200, seed=1)
    demo = ReplayBuffer(_obs(0, 0), 2, capacity=200, seed=2)
    _fill(online, episodes=4, length=10, start_episode=0)
    _fill(demo, episodes=4, length=10, start_episode=100)
    batch = MixedSampler(online, demo).sample(256)
    from_demo = batch["observations"]["state"][:, 0] >= 100
    assert from_demo.sum() == 128
    np.testing.assert_array_equal(batch["demo"], from_demo.astype(np.float32))  # the rows BC may imitate
    _assert_consistent(batch)
    quarter = MixedSampler(online, demo, demo_fraction=0.25).sample(200)
    assert (quarter["observations"]["state"][:, 0] >= 100).sum() == 50
    empty_demo = ReplayBuffer(_obs(0, 0), 2, capacity=10)
    assert (MixedSampler(online, empty_demo).sample(64)["observations"]["state"][:, 0] < 100).all()
    with pytest.raises(ValueError, match="demo_fraction"):
        MixedSampler(online, demo, demo_fraction=1.5)


def test_concat_batches_nested():
    a = {"observations": {"state": np.zeros((2, 1))}, "rewards": np.zeros(2)}
    b = {"observations": {"state": np.ones((3, 1))}, "rewards": np.ones(3)}
    out = concat_batches(a, b)
    assert out["observations"]["state"].shape == (5, 1) and out["rewards"].tolist() == [0, 0, 1, 1, 1]


def test_save_load_roundtrip_continues_identically(tmp_path):
    buffer = ReplayBuffer(_obs(0, 0), 2, capacity=30, seed=7)
    _fill(buffer, episodes=6, length=7)  # wraps the ring
    path = tmp_path / "buf.npz"
    buffer.save(path)
    loaded = ReplayBuffer.load(path)
    assert len(loaded) == len(buffer)
    a, b = buffer.sample(50), loaded.sample(50)  # same rng state -> same sample
    np.testing.assert_array_equal(a["observations"]["wrist"], b["observations"]["wrist"])
    np.testing.assert_array_equal(a["actions"], b["actions"])
    _fill(buffer, 1, 3, start_episode=9)
    _fill(loaded, 1, 3, start_episode=9)
    np.testing.assert_array_equal(buffer.sample(40)["next_observations"]["front"],
                                  loaded.sample(40)["next_observations"]["front"])


def test_interrupted_save_keeps_previous_file(tmp_path, monkeypatch):
    buffer = ReplayBuffer(_obs(0, 0), 2, capacity=30)
    _fill(buffer, episodes=1, length=5)
    path = tmp_path / "buf.npz"
    buffer.save(path)
    _fill(buffer, episodes=2, length=5, start_episode=1)

    real_savez = np.savez

    def crash_midway(f, **arrays):
        real_savez(f, **dict(list(arrays.items())[:2]))  # part of the file is written, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        buffer.save(path)
    monkeypatch.undo()
    assert len(ReplayBuffer.load(path)) == 5
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []


def test_a_saved_buffer_with_non_finite_values_is_refused_on_load(tmp_path):
    buffer = ReplayBuffer(_obs(0, 0), 2, capacity=10)
    for step in range(3):
        buffer.insert({"observations": _obs(step, 0), "actions": np.zeros(2, np.float32), "rewards": 0.0,
                       "masks": 1.0, "dones": False, "next_observations": _obs(step + 1, 0)})
    buffer.actions[1] = np.nan  # a damaged or tampered file
    buffer.save(tmp_path / "b.npz")
    with pytest.raises(FloatingPointError, match="actions"):
        ReplayBuffer.load(tmp_path / "b.npz")
