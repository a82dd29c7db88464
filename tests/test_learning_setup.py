"""What makes PandaPickCube learnable: mixed minibatches per critic step, the shaped reward, the task defaults."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from serl.agents.sac import SACConfig
from serl.cli.train import TrainConfig, apply_task_defaults
from serl.data.replay import MixedSampler, ReplayBuffer
from serl.envs.rewards import PickCubeReward
from serl.envs.tasks import make_sim_env
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


def test_shaping_with_the_agents_discount_shifts_the_discounted_return_by_the_start_potential():
    from robot_servers.backends.base import RobotState

    gamma = 0.9
    reward_fn = PickCubeReward(shaping=True, shaping_discount=gamma)
    cube = np.array([0.5, 0.0, 0.02, 0, 0, 0, 1])
    heights = [0.20, 0.12, 0.06, 0.03, 0.03, 0.03, 0.08, 0.123]  # hand over the cube: down, grasp, lift
    states = [RobotState(tcp_pose=np.array([0.5, 0.0, z, 1, 0, 0, 0]), tcp_vel=np.zeros(6), wrench=np.zeros(6),
                         q=np.zeros(7), dq=np.zeros(7), gripper_width=0.04, target_pose=np.zeros(7))
              for z in heights]
    lifted = [cube + [0, 0, dz, 0, 0, 0, 0] for dz in (0.05, 0.101)]
    scenes = [{"cube": cube}] * 6 + [{"cube": lifted[0]}, {"cube": lifted[1]}]
    reward_fn.reset(scenes[0], states[0])
    start = reward_fn.potential
    steps = [reward_fn(scene, state) for scene, state in zip(scenes[1:], states[1:])]
    assert [success for _, success in steps] == [False] * 6 + [True]
    assert steps[0][0] > 0 and steps[3][0] < 0  # progress pays at once; waiting costs (1 - gamma) * phi
    # the lift ends the episode: phi(terminal) = 0, so shaping adds exactly -phi(s0) to the discounted return
    discounted = sum(gamma**t * reward for t, (reward, _) in enumerate(steps))
    assert discounted == pytest.approx(gamma ** (len(steps) - 1) * 1.0 - start, abs=1e-9)


def test_unshaped_tasks_keep_their_sparse_reward_and_unknown_scenes_are_refused():
    env = make_sim_env("PandaPickCube", seed=0, max_episode_steps=2)
    env.reset(seed=0)
    assert env.step(np.array([0, 0, -1.0, 0, 0, 0, 1.0]))[1] == 0.0
    env.close()
    with pytest.raises(ValueError, match="reward_shaping"):
        make_sim_env("PandaPegInsertion", seed=0, reward_shaping=True)


def test_pick_cube_train_defaults_add_shaping_translation_only_cube_position_and_grasp_critic_unless_told_otherwise():
    tuned = apply_task_defaults(TrainConfig(task="PandaPickCube"))
    assert tuned.overrides == ("reward_shaping=true", "rotation_actions=false", "object_state=position",
                              "shaping_discount=0.97")
    assert tuned.agent.grasp_critic and tuned.agent.bc_weight > 0 and tuned.agent.discount == 0.97
    far_sighted = TrainConfig(task="PandaPickCube", agent=dataclasses.replace(SACConfig.rlpd_with_demo_bc(), discount=0.99))
    assert apply_task_defaults(far_sighted).overrides[-1] == "shaping_discount=0.99"  # follows the agent's discount
    given = apply_task_defaults(TrainConfig(task="PandaPickCube", overrides=("shaping_discount=1",)))
    assert given.overrides == ("shaping_discount=1", "reward_shaping=true", "rotation_actions=false",
                               "object_state=position")
    explicit = apply_task_defaults(TrainConfig(task="PandaPickCube", overrides=("reward_shaping=false",)))
    assert explicit.overrides == ("reward_shaping=false", "rotation_actions=false", "object_state=position")
    plain = apply_task_defaults(TrainConfig(task="PandaPickCube", task_defaults=False))
    assert plain.overrides == () and plain.agent == SACConfig.rlpd_with_demo_bc()
    assert apply_task_defaults(TrainConfig(task="PandaPegInsertion")).agent == SACConfig.rlpd_with_demo_bc()


def test_handover_defaults_clone_noisy_demos_by_likelihood_with_a_capped_spread():
    tuned = apply_task_defaults(TrainConfig(task="PandaHandover"))
    assert tuned.agent.gripper_indices == (3, 7) and tuned.agent.bc_likelihood and tuned.agent.policy_std_max == 0.3
    assert tuned.agent.explore_std_max == 0.1
    assert tuned.demo_noise == 0.3 and "reward_shaping=true" in tuned.overrides
    mine = apply_task_defaults(TrainConfig(task="PandaHandover", demo_noise=0.05))
    assert mine.demo_noise == 0.05


def test_pixel_defaults_cache_a_frozen_small_backbone_at_64_pixels_unless_told_otherwise():
    tuned = apply_task_defaults(TrainConfig(task="PandaPickCube", pixels=True))
    assert "camera_size=64" in tuned.overrides and "reward_shaping=true" in tuned.overrides
    assert (tuned.agent.encoder, tuned.agent.freeze_backbone, tuned.agent.encoder_latent_dim) == ("small", True, 64)
    assert tuned.agent.grasp_critic and tuned.agent.feature_cache and tuned.batch_size == 128
    mine = apply_task_defaults(TrainConfig(task="PandaPickCube", pixels=True, batch_size=64, overrides=("camera_size=96",),
                                           agent=SACConfig.rlpd_with_demo_bc(encoder_latent_dim=128)))
    assert mine.batch_size == 64 and mine.agent.encoder_latent_dim == 128 and mine.agent.freeze_backbone
    assert "camera_size=64" not in mine.overrides and "camera_size=96" in mine.overrides
    assert apply_task_defaults(TrainConfig(task="PandaPickCube")).batch_size == 256  # state runs keep theirs
    env = make_sim_env("PandaPickCube", pixels=True, seed=0, camera_size=64)
    obs, _ = env.reset(seed=0)
    assert obs["images"]["front"].shape == obs["images"]["wrist"].shape == (64, 64, 3)
    env.close()
    with pytest.raises(ValueError, match="camera_size: task 'PandaPickCube' has no camera"):
        make_sim_env("PandaPickCube", seed=0, camera_size=64)
    with pytest.raises(ValueError, match="shaping_discount"):
        make_sim_env("PandaPickCube", seed=0, reward_shaping=True, shaping_discount=1.5)
