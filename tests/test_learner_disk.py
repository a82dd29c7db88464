"""A learner whose disk fills up keeps training, loses nothing and recovers when space returns (a real tmpfs),
and the replay data on disk follows what the buffers hold."""

from __future__ import annotations

import dataclasses
import subprocess
import time

import numpy as np
import pytest

from test_runtime_learner import cfg, client_for, free_port, receive_until, transition  # noqa: F401 (fixture)

from serl.runtime.config import run_config_hash
from serl.runtime.learner import Learner


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"mounting a tmpfs needs root here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk) -> None:
    chunk = b"\0" * 2**16
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass


def test_a_full_disk_pauses_storage_not_training_and_nothing_is_lost(cfg, small_disk):  # noqa: F811
    run_dir = small_disk / "run"
    learner = Learner(cfg, run_dir)
    client = client_for(cfg, run_config_hash(cfg.env, cfg.agent))
    try:
        assert client.wait_connected(10)
        for i in range(20):
            client.send(transition(i, intervened=False))
        assert client.flush(10)
        receive_until(learner, 20)

        _fill(small_disk)
        for i in range(20, 60):
            client.send(transition(i, intervened=False))
        step, note = learner.save()
        assert step is None and "NOT written" in note and "No space left" in note
        updates = learner.counters.updates
        while learner.counters.updates < updates + 20:  # it keeps training on what it has
            learner.step()
            learner.backlog = max(learner.backlog, 1)
        assert learner.counters.env_steps == 20
        assert client.stats()["acked"] == 20  # nothing is acknowledged that is not on disk
        deadline = time.monotonic() + 10
        while (meta := _weights_meta(cfg, client)).get("checkpoint_failing") != 1.0:  # actors hear of it
            assert time.monotonic() < deadline, meta
            learner.step()

        (small_disk / "filler").unlink()
        receive_until(learner, 60, timeout=60)  # the actor's resends go through
        assert client.flush(30) and client.stats()["acked"] == 60
        learner.next_checkpoint_try = 0.0
        step, note = learner.save()
        assert step == 60 and learner.checkpoint_failure is None, note
    finally:
        client.close()
        learner.close()
    resumed = Learner(dataclasses.replace(cfg, resume=True), run_dir)
    try:
        ids = resumed.online.gather(np.arange(resumed.online.oldest_id, resumed.online.num_inserted))
        assert sorted(ids["observations"]["state"][:, 0].astype(int).tolist()) == list(range(60))
    finally:
        resumed.close()
    leftovers = [p.name for p in run_dir.rglob("*") if ".tmp" in p.name or "orbax-checkpoint-tmp" in p.name]
    assert leftovers == []


def _weights_meta(config, client) -> dict:
    from serl.runtime.policy import create_agent, decode_weights

    newest = client.latest_weights()
    if newest is None:
        return {}
    agent = create_agent(config.run.seed, {"state": np.zeros(3, np.float32)}, 1, config.agent)
    return decode_weights(agent, newest[1])[1]



def test_replay_data_on_disk_follows_what_the_buffers_hold(cfg, tmp_path):  # noqa: F811
    learner = Learner(cfg, tmp_path / "run")
    client = client_for(cfg, run_config_hash(cfg.env, cfg.agent))
    try:
        assert client.wait_connected(10)
        for i in range(2000):
            client.send(transition(i, intervened=i % 50 == 0))
        assert client.flush(30)
        receive_until(learner, 2000)
        per_transition = learner.online_log.disk_bytes() / 2000
        demo_bytes = learner.demo_log.disk_bytes()
    finally:
        client.close()
        learner.close()
    # a Pendulum transition holds 2 x 3 + 1 + 4 numbers; with keys and framing it stays a few hundred bytes
    assert per_transition < 600, per_transition
    assert demo_bytes < 40 * 600 + 1000  # the 40 interventions, not the online data again
    assert not list((tmp_path / "run" / "checkpoints").rglob("*.npz"))
