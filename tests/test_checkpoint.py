"""Checkpoints: bit-identical resume, keep-last-K, interrupted save leaves the previous step loadable."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from serl.agents import SACAgent, SACConfig
from serl.agents.checkpoint import Checkpointer
from serl.data.replay import ReplayBuffer

OBS = {"state": np.zeros(3, np.float32), "wrist": np.zeros((8, 8, 3), np.uint8)}
AGENT_OBS = {"state": OBS["state"]}  # agent reads the state; the buffer still round-trips frames
CONFIG = SACConfig(hidden_dims=(8,), num_qs=3, num_min_qs=2, utd_ratio=2,
                   grasp_critic=True)


def _filled_buffer(seed=0, steps=40):
    buffer = ReplayBuffer(OBS, 3, capacity=64, seed=seed)
    rng = np.random.default_rng(seed)
    obs = {"state": rng.normal(size=3).astype(np.float32), "wrist": rng.integers(0, 255, (8, 8, 3), np.uint8)}
    for t in range(steps):
        nxt = {"state": rng.normal(size=3).astype(np.float32), "wrist": rng.integers(0, 255, (8, 8, 3), np.uint8)}
        buffer.insert({"observations": obs, "actions": rng.uniform(-1, 1, 3).astype(np.float32),
                       "rewards": float(rng.normal()), "masks": 1.0, "dones": t % 10 == 9, "next_observations": nxt})
        obs = nxt
    return buffer


def _leaves(agent):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(agent)]


def test_resume_is_bit_identical_and_keeps_last_k(tmp_path):
    agent = SACAgent.create(0, AGENT_OBS, 3, CONFIG)
    buffer = _filled_buffer()
    for _ in range(2):
        agent, _ = agent.update(buffer.sample(2 * 4))
    ckpt = Checkpointer(tmp_path, max_to_keep=2)
    ckpt.save(1, agent, {"online": buffer})
    ckpt.save(2, agent, {"online": buffer}, metadata={"env_steps": 40})
    uninterrupted, _ = agent.update(buffer.sample(2 * 4))
    ckpt.save(3, uninterrupted, {"online": buffer})
    assert ckpt.all_steps() == [2, 3]
    assert sorted(os.listdir(tmp_path / "buffers")) == ["online_2.npz", "online_3.npz"]
    ckpt.close()

    # a restart: new template, restore step 2, one more update
    restarted = Checkpointer(tmp_path, max_to_keep=2)
    template = SACAgent.create(123, AGENT_OBS, 3, CONFIG)
    restored, buffers, meta = restarted.restore(template, step=2)
    assert meta["step"] == 2 and meta["env_steps"] == 40 and int(restored.step) == 2
    resumed, _ = restored.update(buffers["online"].sample(2 * 4))
    for a, b in zip(_leaves(uninterrupted), _leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError):
        Checkpointer(tmp_path / "empty").restore(template)


CRASH_SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    sys.path.insert(0, {root!r})
    from tests.test_checkpoint import AGENT_OBS, CONFIG, _filled_buffer
    from serl.agents import SACAgent
    from serl.agents.checkpoint import Checkpointer
    agent = SACAgent.create(0, AGENT_OBS, 3, CONFIG)
    ckpt = Checkpointer({directory!r})
    ckpt.save(1, agent, {{"online": _filled_buffer(steps=20)}})
    real_savez = np.savez
    def die_midway(f, **arrays):
        real_savez(f, **dict(list(arrays.items())[:3]))
        f.flush()
        os._exit(9)  # the process is killed in the middle of writing step 2
    np.savez = die_midway
    ckpt.save(2, agent.replace(step=agent.step + 5), {{"online": _filled_buffer(steps=40)}})
""")


def test_crash_mid_save_leaves_previous_checkpoint_loadable(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = CRASH_SCRIPT.format(root=root, directory=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 9, result.stderr[-2000:]
    ckpt = Checkpointer(tmp_path)
    assert ckpt.latest_step() == 1
    agent, buffers, _ = ckpt.restore(SACAgent.create(5, AGENT_OBS, 3, CONFIG))
    assert int(agent.step) == 0 and len(buffers["online"]) == 20
    # the next save works and cleans up the leftovers
    ckpt.save(2, agent, buffers)
    assert ckpt.latest_step() == 2
    assert sorted(os.listdir(tmp_path / "buffers"))[-2:] == ["online_1.npz", "online_2.npz"]
