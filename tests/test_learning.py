"""State-based SAC learns gymnasium Pendulum-v1 (2 seeds); the RLPD configuration in the slow run."""

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
    cfg = SACConfig.rlpd(hidden_dims=(256, 256), utd_ratio=4, init_temperature=0.1)
    _, result = train(cfg, LoopConfig(total_steps=2000, random_steps=200, batch_size=256, eval_episodes=5, seed=seed))
    assert result["final_return"] > -300
