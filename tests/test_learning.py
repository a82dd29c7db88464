"""State-based SAC learns gymnasium Pendulum-v1 (2 seeds; the RLPD configuration in the slow run), and DrQ learns
a small task that only its camera shows."""

import gymnasium as gym
import numpy as np
import pytest

from serl.agents import SACConfig
from serl.agents.training import LoopConfig, train

FAST = SACConfig(hidden_dims=(64, 64), num_qs=2, num_min_qs=2, critic_layer_norm=True, utd_ratio=4,
                 init_temperature=0.1)


@pytest.mark.parametrize("seed", [0, 1])
def test_sac_solves_pendulum(seed):
    _, result = train(FAST, LoopConfig(total_steps=1500, random_steps=200, batch_size=128, eval_episodes=3, seed=seed))
    assert result["initial_return"] < -900  # an untrained policy does not swing up
    assert result["final_return"] > -300
    assert result["final_return"] - result["initial_return"] > 600


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_rlpd_config_solves_pendulum(seed):
    cfg = SACConfig(hidden_dims=(256, 256), num_qs=10, num_min_qs=2, critic_layer_norm=True, utd_ratio=4,
                    init_temperature=0.1)
    _, result = train(cfg, LoopConfig(total_steps=2000, random_steps=200, batch_size=256, eval_episodes=5, seed=seed))
    assert result["final_return"] > -300


class DotTarget(gym.Env):
    """One-step visual task: act at the place of a white dot; nothing but the 16x16 image shows where it is."""

    size = 16
    observation_space = gym.spaces.Dict({"camera": gym.spaces.Box(0, 255, (size, size, 3), np.uint8)})
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.target = self.np_random.uniform(-0.7, 0.7, 2)
        row, col = np.round((self.target + 1) / 2 * (self.size - 1)).astype(int)
        image = np.zeros((self.size, self.size, 3), np.uint8)
        image[row - 1: row + 2, col - 1: col + 2] = 255
        return {"camera": image}, {}

    def step(self, action):
        reward = 1.0 - float(np.linalg.norm(np.asarray(action) - self.target))
        return self.reset()[0], reward, True, False, {}


def test_drq_learns_where_a_dot_is_from_pixels():
    if "DotTarget-v0" not in gym.registry:
        gym.register("DotTarget-v0", entry_point=DotTarget, max_episode_steps=1)
    cfg = SACConfig(hidden_dims=(64, 64), encoder="small", encoder_latent_dim=32, augment_pad=1, discount=0.0,
                    init_temperature=0.05)
    _, result = train(cfg, LoopConfig(env_id="DotTarget-v0", total_steps=700, random_steps=100, batch_size=32,
                                      eval_episodes=50, seed=0))
    assert result["final_return"] > 0.8  # within ~0.2 of the dot on average; its pixel grid is 0.13 wide
    assert result["final_return"] - result["initial_return"] > 0.3
