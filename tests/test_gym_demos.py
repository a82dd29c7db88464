"""Demos for a plain gymnasium env (``gym:<id>``): recorded with the project's writer, loaded by the learner, trained from."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np

from serl.data.episodes import EpisodeRecorder, EpisodeWriter
from serl.runtime.envs import ObservationWrappers, build_env, flat_state_keys
from serl.runtime.env_config import EnvConfig

PENDULUM = EnvConfig(task="gym:Pendulum-v1", overrides=("max_episode_steps=25",))


def record_pendulum_demos(path, episodes: int = 4) -> int:
    """Episodes of an energy-pumping controller, stored in the layout demo files use (observations/state/state)."""
    env = build_env(PENDULUM, seed=0, observations=ObservationWrappers(flat=False))
    recorder = EpisodeRecorder(task=PENDULUM.task, source="scripted")
    steps = 0
    with EpisodeWriter(path, config={"task": PENDULUM.task}) as writer:
        for episode in range(episodes):
            obs, _ = env.reset(seed=episode)
            recorder.start(obs)
            done = False
            while not done:
                cos, sin, velocity = obs["state"]["state"]
                action = np.array([np.clip(np.sign(velocity * cos) if cos < 0.9 else -2 * sin - velocity, -1, 1)],
                                  np.float32)
                obs, reward, terminated, truncated, info = env.step(action)
                recorder.add(action, reward, obs, terminated, truncated, info)
                done = terminated or truncated
                steps += 1
            writer.write(recorder.finish())
    env.close()
    return steps


def test_a_gym_env_has_one_state_entry_and_its_demos_fill_the_buffer(tmp_path):
    from serl.data.demos import load_episode_file
    from serl.data.replay import ReplayBuffer

    env = build_env(PENDULUM, seed=0)
    assert flat_state_keys(env) == ["state"]
    env.close()
    assert record_pendulum_demos(tmp_path / "demos.h5") == 100
    buffer = ReplayBuffer({"state": np.zeros(3, np.float32)}, 1, capacity=200)
    assert load_episode_file(buffer, tmp_path / "demos.h5", ["state"]) == 100
    assert np.all(np.abs(buffer.obs["state"][:100, :2]) <= 1.0)  # cos and sin of the angle


def test_serl_train_learns_a_gym_env_from_a_demo_file(tmp_path):
    record_pendulum_demos(tmp_path / "demos.h5")
    result = subprocess.run(
        [sys.executable, "-m", "serl.cli.main", "train", "gym:Pendulum-v1", "--overrides", "max_episode_steps=25",
         "--demos", str(tmp_path / "demos.h5"), "--env-steps", "300", "--run.root", "runs", "--run.name", "g",
         "--min-online-steps", "50", "--batch-size", "32", "--agent.hidden-dims", "32", "32", "--agent.num-qs", "2",
         "--agent.utd-ratio", "1", "--no-display"],
        cwd=tmp_path, capture_output=True, text=True, timeout=400,
        env={**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache")},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    learner_log = (tmp_path / "runs" / "gym_Pendulum-v1" / "g" / "logs" / "learner.log").read_text()
    assert re.search(r"loaded 100 demo transitions", learner_log), learner_log[-2000:]
    assert "checkpoint written at env step 300 (" in result.stdout
