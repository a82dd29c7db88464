"""The learner's bookkeeping in one process, over real sockets: buffer routing, weights, checkpoint + resume, refusal."""

from __future__ import annotations

import dataclasses
import socket
import time

import numpy as np
import pytest

from serl.agents.sac import SACConfig
from serl.runtime.actor import transition_from_step
from serl.runtime.config import EnvConfig, LearnerConfig, NetConfig, RunConfig, run_config_hash
from serl.runtime.learner import Learner
from serl.runtime.policy import create_agent, decode_weights, policy_params
from serl.transport.actor_client import ActorClient, ActorClientConfig, HandshakeRejected


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def cfg(tmp_path):
    return LearnerConfig(
        env=EnvConfig(task="gym:Pendulum-v1"), run=RunConfig(root=tmp_path, name="unit", logger="none"),
        net=NetConfig(port=free_port(), weights_port=free_port()), agent=SACConfig(hidden_dims=(16, 16)),
        batch_size=4, min_online_steps=6, checkpoint_every=1000, quiet=True,
    )


def client_for(cfg: LearnerConfig, config_hash_: str) -> ActorClient:
    return ActorClient(ActorClientConfig(actor_id="unit-actor", config_hash=config_hash_, host="127.0.0.1",
                                         request_port=cfg.net.port, weights_port=cfg.net.weights_port,
                                         flush_interval_s=0.01))


def transition(i: int, intervened: bool) -> dict:
    obs = {"state": np.full(3, i, np.float32)}
    next_obs = {"state": np.full(3, i + 1, np.float32)}
    info = {"intervened": intervened, "executed_action": np.array([0.5], np.float32) if intervened else None,
            "grasp_penalty": -0.02 if i % 4 == 1 else 0.0}
    return transition_from_step(obs, np.array([-0.1], np.float32), -1.0, next_obs, False, i % 5 == 4, info)


def receive_until(learner: Learner, steps: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while learner.counters.env_steps < steps and time.monotonic() < deadline:
        learner.receive(timeout=0.1)
    assert learner.counters.env_steps == steps


def test_learner_routes_interventions_publishes_weights_and_resumes(cfg, tmp_path):
    run_dir = tmp_path / "run"
    learner = Learner(cfg, run_dir)
    client = client_for(cfg, run_config_hash(cfg.env, cfg.agent))
    try:
        assert client.wait_connected(10)
        for i in range(10):
            client.send(transition(i, intervened=i % 3 == 0))
        assert client.flush(10)
        receive_until(learner, 10)
        assert len(learner.online) == 10 and len(learner.demo) == 4 and learner.counters.interventions == 4
        # the human's action is what was stored, for both buffers
        assert np.allclose(learner.demo.actions[:4], 0.5) and learner.counters.episodes == 2
        np.testing.assert_allclose(learner.online.scalars["grasp_penalty"][:10], [-0.02 * (i % 4 == 1) for i in range(10)])
        assert learner.training and learner.backlog == 10
        while learner.backlog:
            learner.update()
        assert learner.counters.updates == 10

        # the actor gets the newest weights and they fit its own agent
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (client.latest_weights() or (-1,))[0] < learner.counters.weights_version:
            time.sleep(0.05)
        version, blob = client.latest_weights()
        assert version == learner.counters.weights_version
        actor_agent = create_agent(cfg.run.seed, {"state": np.zeros(3, np.float32)}, 1, cfg.agent)
        actor_agent, meta = decode_weights(actor_agent, blob)
        assert meta["updates"] == 10 and meta["env_steps"] == 10 and meta["episodes"] == 2
        expected = policy_params(learner.agent)["actor"]
        got = policy_params(actor_agent)["actor"]
        assert all(np.allclose(a, b) for a, b in zip(_leaves(expected), _leaves(got)))
        assert learner.save() == (10, f"checkpoint written at env step 10 (10 updates) in {run_dir / 'checkpoints'}")
        assert (run_dir / "checkpoints" / "agent" / "10").is_dir()
        assert not list((run_dir / "checkpoints" / "buffers").glob("*"))  # the data is in the logs, once
        saved = {name: (buf.gather(np.arange(buf.oldest_id, buf.num_inserted)), buf.rng.bit_generator.state)
                 for name, buf in (("online", learner.online), ("demo", learner.demo))}
    finally:
        client.close()
        learner.close()

    resumed = Learner(dataclasses.replace(cfg, resume=True), run_dir)
    try:
        assert resumed.counters.env_steps == 10 and resumed.counters.updates == 10
        assert len(resumed.online) == 10 and len(resumed.demo) == 4
        for name, buf in (("online", resumed.online), ("demo", resumed.demo)):  # bit for bit, sampling state too
            batch, rng_state = saved[name]
            _assert_trees_equal(buf.gather(np.arange(buf.oldest_id, buf.num_inserted)), batch)
            assert buf.rng.bit_generator.state == rng_state
        assert int(resumed.agent.step) == 10
        assert resumed.counters.weights_version > version  # actors take the resumed learner's weights as newer
    finally:
        resumed.close()


def test_actor_with_another_config_is_refused_by_name(cfg, tmp_path):
    learner = Learner(cfg, tmp_path / "run")
    other = run_config_hash(EnvConfig(task="gym:Pendulum-v1", pixels=True), cfg.agent)
    client = client_for(cfg, other)
    try:
        with pytest.raises(HandshakeRejected, match="config hash"):
            client.wait_connected(10)
    finally:
        client.close()
        learner.close()


def _assert_trees_equal(a, b) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _assert_trees_equal(a[key], b[key])
        else:
            np.testing.assert_array_equal(a[key], b[key])


def _leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def test_a_malformed_batch_is_refused_whole_and_the_learner_goes_on(cfg, tmp_path):
    learner = Learner(cfg, tmp_path / "run")
    client = client_for(cfg, run_config_hash(cfg.env, cfg.agent))
    try:
        bad = transition(0, False)
        bad["observations"] = {"state": np.zeros(5, np.float32)}  # another env's layout
        client.send(transition(1, False))
        client.send(bad)
        assert client.flush(10)
        client.send(transition(2, False))
        assert client.flush(10)
        receive_until(learner, 1)
        assert client.stats()["refused_batches"] == 1 and len(learner.online) == 1
        assert learner.refused == {"observations.state": 2}  # the good one of the bad batch went with it
    finally:
        client.close()
        learner.close()


def test_the_actor_env_charges_the_grasp_critic_for_gripper_changes():
    from serl.runtime.envs import build_env

    env = build_env(EnvConfig(task="PandaPickCube", grasp_penalty=0.02), seed=0)
    try:
        obs, _ = env.reset(seed=0)
        penalties = []
        for gripper in (1.0, -1.0, -1.0, 1.0):  # stays open, closes, stays closed, opens
            action = np.zeros(env.action_space.shape, np.float32)
            action[-1] = gripper
            next_obs, reward, terminated, truncated, info = env.step(action)
            transition = transition_from_step(obs, action, reward, next_obs, terminated, truncated, info)
            penalties.append(float(transition["grasp_penalty"]))
            assert transition["rewards"] == np.float32(reward)  # the SAC reward is untouched
            obs = next_obs
    finally:
        env.close()
    np.testing.assert_allclose(penalties, [0.0, -0.02, 0.0, -0.02])


def test_save_says_when_it_wrote_nothing_and_why(cfg, tmp_path):
    learner = Learner(cfg, tmp_path / "run")
    client = client_for(cfg, run_config_hash(cfg.env, cfg.agent))
    try:
        assert learner.save() == (None, "no checkpoint written: no transition was received yet")
        assert client.wait_connected(10)
        for i in range(3):
            client.send(transition(i, intervened=False))
        assert client.flush(10)
        receive_until(learner, 3)
        step, note = learner.save()
        assert step == 3 and note.endswith("no update finished yet, so the agent is as initialised")
        assert learner.save() == (3, "checkpoint at env step 3 already on disk (nothing new since)")
    finally:
        client.close()
        learner.close()


def test_a_peer_sending_nan_inf_and_huge_values_is_refused_and_training_stays_finite(cfg, tmp_path):
    import jax

    learner = Learner(cfg, tmp_path / "run")
    client = client_for(cfg, run_config_hash(cfg.env, cfg.agent))
    try:
        assert client.wait_connected(10)
        for i in range(8):
            client.send(transition(i, intervened=False))
        assert client.flush(10)
        poison = []
        for i in range(128):  # NaN / inf / huge in every field a peer controls
            bad = transition(i, intervened=False)
            field, value = [("observations", np.nan), ("next_observations", np.inf), ("observations", 1e30),
                            ("rewards", np.nan), ("actions", np.nan), ("actions", 5.0)][i % 6]
            if field.endswith("observations"):
                bad[field] = {"state": np.full(3, value, np.float32)}
            else:
                bad[field] = np.full(np.shape(bad[field]), value, np.float32)
            poison.append(bad)
        for bad in poison:
            client.send(bad)
            assert client.flush(10)  # one batch each: each is refused by itself
        receive_until(learner, 8)
        assert client.stats()["refused_batches"] == 128
        assert sum(learner.refused.values()) == 128 and len(learner.online) == 8
        while learner.backlog:
            learner.update()
        assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(learner.agent))
        learner.write_status()
        status = (tmp_path / "run" / "status" / "learner.json").read_text()
        assert '"refused_transitions"' in status and "observations.state" in status
    finally:
        client.close()
        learner.close()


def test_a_resumed_pixel_learner_rebuilds_its_feature_cache_and_updates_as_before(tmp_path):
    agent = SACConfig(hidden_dims=(16, 16), num_qs=2, encoder="small", encoder_latent_dim=8, freeze_backbone=True,
                      grasp_critic=True, utd_ratio=2)
    cfg = LearnerConfig(
        env=EnvConfig(task="PandaPickCube", pixels=True, overrides=("camera_size=16", "rotation_actions=false")),
        run=RunConfig(root=tmp_path, name="pixels", logger="none"), agent=agent,
        net=NetConfig(port=free_port(), weights_port=free_port()), batch_size=4, min_online_steps=6,
        checkpoint_every=1000, quiet=True,
    )
    run_dir = tmp_path / "run"
    learner = Learner(cfg, run_dir)
    assert type(learner.sampler.online).__name__ == "FeatureCache"
    client = client_for(cfg, run_config_hash(cfg.env, cfg.agent))
    rng = np.random.default_rng(0)

    def obs():
        return {k: rng.integers(0, 256, shape, np.uint8) if np.dtype(dtype) == np.uint8 else
                rng.normal(size=shape).astype(dtype) * 0.1 for k, (shape, dtype) in learner.spec.observations.items()}

    try:
        assert client.wait_connected(10)
        current = obs()
        for i in range(12):
            nxt = obs()
            action = np.array([0.1, -0.2, 0.3, (-1.0, 0.0, 1.0)[i % 3]], np.float32)
            client.send(transition_from_step(current, action, float(i % 4 == 0), nxt, False, i % 6 == 5,
                                             {"intervened": i % 3 == 0, "executed_action": None}))
            current = obs() if i % 6 == 5 else nxt
        assert client.flush(10)
        receive_until(learner, 12)
        for _ in range(3):
            learner.update()
        learner.save()
        learner.update()  # the first update after the checkpoint: the resumed learner must make the same one
        expected = _leaves(learner.agent.critic.params)
    finally:
        client.close()
        learner.close()

    resumed = Learner(dataclasses.replace(cfg, resume=True), run_dir)
    try:
        assert resumed.sampler.online.synced == 0  # rebuilt from the replayed frames on the first sample
        resumed.update()
        for a, b in zip(expected, _leaves(resumed.agent.critic.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    finally:
        resumed.close()
