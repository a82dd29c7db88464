"""What makes PandaPickCube learnable: mixed minibatches per critic step, the shaped reward, the task defaults."""

from __future__ import annotations

import numpy as np
import pytest

from serl.cli.train import TRAIN_AGENT, TrainConfig, apply_task_defaults
from serl.data.replay import MixedSampler, ReplayBuffer
from serl.envs.tasks import PickCubeReward, make_sim_env
from serl.runtime.learner import update_batch


def _buffer(reward: float, seed: int) -> ReplayBuffer:
    example = {"state": np.zeros(3, np.float32)}
    buffer = ReplayBuffer(example, 2, 64, seed=seed)
    for _ in range(32):
        buffer.insert({"observations": example, "actions": np.zeros(2, np.float32), "rewards": reward,
                       "masks": 1.0, "dones": False, "next_observations": example})
    return buffer


def test_every_update_slice_mixes_demo_and_online_rows():
    online, demo = _buffer(0.0, seed=0), _buffer(1.0, seed=1)
    batch = update_batch(MixedSampler(online, demo, 0.5), batch_size=8, utd_ratio=4)
    slices = batch["rewards"].reshape(4, 8)  # the agent's critic minibatches; the actor trains on the last
    np.testing.assert_array_equal(slices.sum(axis=1), [4, 4, 4, 4])


def test_shaped_pick_reward_pays_progress_and_telescopes():
    env = make_sim_env("PandaPickCube", seed=0, reward_shaping=True, max_episode_steps=8)
    obs, _ = env.reset(seed=0)
    reward_fn = env.reward_fn
    assert isinstance(reward_fn, PickCubeReward) and reward_fn.shaping
    start = reward_fn.potential
    down, up = np.array([0, 0, -1.0, 0, 0, 0, 1.0]), np.array([0, 0, 1.0, 0, 0, 0, 1.0])
    rewards = [env.step(down)[1] for _ in range(4)]
    assert all(r > 0.01 for r in rewards)  # closer to the cube (it lies below the reset pose)
    rewards += [env.step(up)[1] for _ in range(4)]
    assert all(r < -0.01 for r in rewards[5:])  # away again (after one step of the arm's momentum)
    # no success: the shaping sums to the change of potential over the episode
    assert sum(rewards) == pytest.approx(reward_fn.potential - start, abs=1e-6)
    env.close()


def test_unshaped_tasks_keep_their_sparse_reward_and_unknown_scenes_are_refused():
    env = make_sim_env("PandaPickCube", seed=0, max_episode_steps=2)
    env.reset(seed=0)
    assert env.step(np.array([0, 0, -1.0, 0, 0, 0, 1.0]))[1] == 0.0
    env.close()
    with pytest.raises(ValueError, match="reward_shaping"):
        make_sim_env("PandaPegInsertion", seed=0, reward_shaping=True)


def test_pick_cube_train_defaults_add_shaping_translation_only_and_grasp_critic_unless_told_otherwise():
    tuned = apply_task_defaults(TrainConfig(task="PandaPickCube"))
    assert tuned.overrides == ("reward_shaping=true", "rotation_actions=false") and tuned.agent.grasp_critic
    assert tuned.agent.bc_weight > 0
    explicit = apply_task_defaults(TrainConfig(task="PandaPickCube", overrides=("reward_shaping=false",)))
    assert explicit.overrides == ("reward_shaping=false", "rotation_actions=false")
    plain = apply_task_defaults(TrainConfig(task="PandaPickCube", task_defaults=False))
    assert plain.overrides == () and plain.agent == TRAIN_AGENT
    assert apply_task_defaults(TrainConfig(task="PandaPegInsertion")).agent == TRAIN_AGENT
