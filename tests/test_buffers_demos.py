"""Demo loading: HDF5 episode files (serl.data.episodes) and SERL pickle lists into a replay buffer."""

import logging
import pickle

import numpy as np
import pytest

from serl.data.demos import flatten_observation, load_episode_file, load_serl_pickle
from serl.data.episodes import Episode, EpisodeWriter
from serl.data.replay import ReplayBuffer


def _episode(length, offset, success=True):
    steps = np.arange(length + 1, dtype=np.float32)
    return Episode(
        observations={
            "state": {"tcp_pose": np.stack([steps + offset] * 7, 1), "gripper_width": (steps + offset)[:, None] * 0.01},
            "images": {"wrist": np.broadcast_to((steps + offset).astype(np.uint8)[:, None, None, None],
                                                (length + 1, 8, 8, 3)).copy()},
        },
        actions=np.full((length, 7), offset, np.float32),
        rewards=np.zeros(length, np.float32),
        terminated=np.eye(1, length, length - 1, dtype=bool)[0] if success else np.zeros(length, bool),
        truncated=np.zeros(length, bool) if success else np.eye(1, length, length - 1, dtype=bool)[0],
        intervened=np.zeros(length, bool),
        succeed=np.zeros(length, bool),
        timestamps=np.arange(length + 1, dtype=np.float64),
        attrs={"success": success, "task": "test", "source": "scripted"},
    )


def test_hdf5_episodes_fill_buffer_in_state_name_order(tmp_path):
    path = tmp_path / "demos.h5"
    with EpisodeWriter(path, config={"task": "test"}) as writer:
        writer.write(_episode(4, 0))
        writer.write(_episode(3, 100, success=False))
        writer.write(_episode(5, 200))
    example = {"state": np.zeros(8, np.float32), "wrist": np.zeros((8, 8, 3), np.uint8)}
    buffer = ReplayBuffer(example, 7, capacity=100)
    assert load_episode_file(buffer, path, ["gripper_width", "tcp_pose"], only_successful=True) == 9
    batch = buffer.sample(200)
    state, next_state = batch["observations"]["state"], batch["next_observations"]["state"]
    np.testing.assert_allclose(state[:, 0] * 100, state[:, 1])  # gripper_width first, then tcp_pose
    np.testing.assert_allclose(next_state[:, 1], state[:, 1] + 1)  # never across episodes
    np.testing.assert_array_equal(batch["next_observations"]["wrist"][:, 0, 0, 0], next_state[:, 1])
    assert set(batch["actions"][:, 0]) == {0.0, 200.0}
    last = state[:, 1] == 203 + 1  # the terminal step of the 5-step episode
    assert np.all(batch["masks"][last] == 0)
    with pytest.raises(ValueError, match="missing entries.*joint_q"):
        load_episode_file(buffer, path, ["joint_q"])


def test_grasp_penalty_comes_from_recorded_gripper_changes(tmp_path, caplog):
    path = tmp_path / "demos.h5"
    changed = _episode(4, 0)
    changed.gripper_changed = np.array([False, True, False, True])
    with EpisodeWriter(path) as writer:
        writer.write(changed)
        writer.write(_episode(2, 100))  # recorded before the field existed: no penalty, and a warning
    example = {"state": np.zeros(8, np.float32), "wrist": np.zeros((8, 8, 3), np.uint8)}
    with_penalty, without = ReplayBuffer(example, 7, capacity=10), ReplayBuffer(example, 7, capacity=10)
    with caplog.at_level(logging.WARNING, logger="serl.data.demos"):
        assert load_episode_file(with_penalty, path, ["gripper_width", "tcp_pose"], grasp_penalty=0.02) == 6
    assert "1 episodes have no gripper_changed" in caplog.text
    np.testing.assert_allclose(with_penalty.scalars["grasp_penalty"][:6], [0, -0.02, 0, -0.02, 0, 0])
    load_episode_file(without, path, ["gripper_width", "tcp_pose"])
    np.testing.assert_array_equal(without.scalars["grasp_penalty"][:6], 0.0)


def test_flatten_observation_without_images():
    flat = flatten_observation({"state": {"a": np.ones(2), "b": np.zeros(1)}}, ["b", "a"])
    np.testing.assert_array_equal(flat["state"], [0, 1, 1])
    assert set(flat) == {"state"}


def test_serl_pickle_import_warns_and_squeezes_stack(tmp_path, caplog):
    transitions = [{
        "observations": {"state": np.full((1, 4), i, np.float32), "wrist": np.full((1, 8, 8, 3), i, np.uint8)},
        "next_observations": {"state": np.full((1, 4), i + 1, np.float32), "wrist": np.full((1, 8, 8, 3), i + 1, np.uint8)},
        "actions": np.zeros(7), "rewards": 0.0, "masks": 1.0, "dones": i == 4, "grasp_penalty": -0.02,
    } for i in range(5)]
    path = tmp_path / "demo.pkl"
    path.write_bytes(pickle.dumps(transitions))
    buffer = ReplayBuffer({"state": np.zeros(4, np.float32), "wrist": np.zeros((8, 8, 3), np.uint8)}, 7, 20)
    with caplog.at_level(logging.WARNING):
        out = load_serl_pickle(path, buffer)
    assert "pickle" in caplog.text
    assert len(out) == 5 and len(buffer) == 5 and buffer.num_frames == 6  # frames shared along the episode
    batch = buffer.sample(50)
    np.testing.assert_array_equal(batch["next_observations"]["wrist"][:, 0, 0, 0], batch["observations"]["state"][:, 0] + 1)
    assert np.all(batch["grasp_penalty"] == np.float32(-0.02))
    path.write_bytes(pickle.dumps([{"observations": {}}]))
    with pytest.raises(ValueError, match="lacks"):
        load_serl_pickle(path)
