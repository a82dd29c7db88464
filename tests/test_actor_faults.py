"""The actor process under bad weights and a silent learner.

Real sockets and a real ``serl actor`` process: the test runs the learner's transport (``LearnerServer``) and
publishes hand-made weights itself, and serves the MuJoCo twin (lockstep) over HTTP so that it can read the
robot's pose while the actor drives it.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("robot_servers.backends.twin")  # sets MUJOCO_GL before mujoco loads

import jax
from backend_episode import wait_value

from robot_servers.http import ServerConfig, create_app
from robot_servers.serve import ServerThread
from serl.agents.sac import SACConfig
from serl.envs.franka_env import franka_env_under
from serl.envs.http_client import HttpRobotClient
from serl.runtime.actor import WeightsSlot
from serl.runtime.config import EnvConfig, run_config_hash
from serl.runtime.envs import build_env, observation_example
from serl.runtime.logging import read_status
from serl.runtime.policy import (
    create_agent,
    encode_weights,
    policy_params,
    with_policy_params,
)
from serl.transport.learner_server import LearnerServer, LearnerServerConfig

REACH = str(Path(__file__).parent / "runtime_reach_task.py")
ENV = EnvConfig(task="PandaReach", task_module=REACH)
AGENT = SACConfig(hidden_dims=(16, 16))
AGENT_ARGS = ["--agent.hidden-dims", "16", "16"]


class Rig:
    """A twin served over HTTP, a learner transport that records every transition, and the actor process."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        env = build_env(ENV, seed=0)
        self._spec = observation_example(env), int(np.prod(env.action_space.shape))
        base = franka_env_under(env)
        self.backend = base.client.backend
        self.robot_server = ServerThread(create_app(self.backend, {},
                                                    ServerConfig(safety_box=base.task.safety_box))).start()
        self.robot = HttpRobotClient(self.robot_server.url)
        self.server = LearnerServer(LearnerServerConfig(request_port=0, weights_port=0,
                                                        config_hash=run_config_hash(ENV, AGENT))).start()
        self.actions: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        self.version = -1
        self.actor: subprocess.Popen | None = None
        self.status_path = tmp_path / "runs" / "PandaReach" / "faults" / "status" / "actor.json"

    @functools.cached_property
    def agent(self):
        """The actor's initial agent, built after the actor process started: both compile at once."""
        return create_agent(0, *self._spec, AGENT)

    def _drain(self) -> None:
        while not self._stop.is_set():
            for batch in self.server.drain(timeout=0.05):
                with self._lock:
                    self.actions.extend(np.asarray(t["actions"]) for t in batch.transitions)

    def received(self) -> int:
        with self._lock:
            return len(self.actions)

    def all_actions_finite(self) -> bool:
        with self._lock:
            return all(np.all(np.isfinite(a)) for a in self.actions)

    def publish(self, agent, **meta) -> int:
        self.version += 1
        meta = {"env_steps": 0, "episodes": 0, "updates": 0, "backlog": 0, "training": 0.0, **meta}
        self.server.publish_weights(encode_weights(agent, meta), self.version)
        return self.version

    def start_actor(self, *extra: str) -> None:
        args = ["actor", "--env.task", "PandaReach", "--env.task-module", REACH, "--env.robot-url",
                self.robot_server.url, "--net.port", str(self.server.request_port), "--net.weights-port",
                str(self.server.weights_port), "--run.root", "runs", "--run.name", "faults", "--run.logger", "none",
                *AGENT_ARGS, *extra]
        with open(self.tmp_path / "actor.log", "ab") as log:  # the child keeps its own descriptor
            self.actor = subprocess.Popen([sys.executable, "-m", "serl.cli.main", *args], cwd=self.tmp_path,
                                          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def status(self) -> dict:
        return read_status(self.status_path)

    def log(self) -> str:
        path = self.tmp_path / "actor.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for(self, predicate, what: str, timeout: float = 60.0):
        def alive() -> None:
            if self.actor is not None and self.actor.poll() is not None:
                raise AssertionError(f"the actor exited with {self.actor.returncode} while waiting for {what}:\n"
                                     f"{self.log()[-3000:]}")

        return wait_value(predicate, what, timeout, alive=alive, log=self.log, period=0.05)

    def held_steps(self) -> int:
        return self.status().get("held_steps", 0)

    def pose(self) -> tuple[np.ndarray, np.ndarray]:
        state = self.robot.state()
        return np.asarray(state.tcp_pose, float), np.asarray(state.target_pose, float)

    def assert_robot_holds(self, held_steps: int = 5) -> None:
        """The target does not move and the hand stays put while the actor holds ``held_steps`` more periods."""
        settled = self.held_steps() + 3  # the hand settles onto the target of the last step taken
        self.wait_for(lambda: self.held_steps() >= settled, "the robot to settle while held")
        pose, target = self.pose()
        start = self.held_steps()
        self.wait_for(lambda: self.held_steps() >= start + held_steps, f"{held_steps} more held steps")
        pose_after, target_after = self.pose()
        np.testing.assert_allclose(target_after, target, atol=1e-6)
        # on a loaded machine the hand may still be settling onto the held target: it may move only towards it
        before, after = (float(np.linalg.norm(p[:3] - target[:3])) for p in (pose, pose_after))
        moved = float(np.linalg.norm(pose_after[:3] - pose[:3]))
        assert after <= before + 1e-3 and moved <= 2e-3 + (before - after), (before, after, moved)

    def close(self) -> None:
        if self.actor is not None and self.actor.poll() is None:
            self.actor.send_signal(signal.SIGINT)
            try:
                self.actor.wait(30)
            except subprocess.TimeoutExpired:
                self.actor.kill()
                self.actor.wait()
        self._stop.set()
        self._drainer.join(5)
        self.server.close()
        self.robot.close()
        self.robot_server.stop()
        self.backend.close()


@pytest.fixture
def rig(tmp_path):
    rig = Rig(tmp_path)
    yield rig
    rig.close()


def _filled(agent, value: float, alternate_head: bool = False):
    """The agent with every policy parameter set to ``value``; ``alternate_head`` flips the sign of every other
    row of the mean head, so finite parameters overflow to inf - inf = NaN actions."""
    def fill(path, leaf):
        leaf = np.full_like(np.asarray(leaf), value)
        name = jax.tree_util.keystr(path)
        if alternate_head and leaf.ndim == 2 and "Dense_0" in name and "MLP" not in name:
            leaf[1::2] *= -1
        return leaf

    return with_policy_params(agent, jax.tree_util.tree_map_with_path(fill, policy_params(agent)))


def test_bad_weights_never_reach_the_robot_and_the_actor_resumes_on_good_ones(rig):
    rig.start_actor()
    good = rig.agent
    # no good weights at all: the actor waits without moving the robot
    rig.publish(_filled(good, np.nan))
    rig.wait_for(lambda: rig.status().get("refused_weights", 0) >= 1, "the first (NaN) weights refused", 90)
    assert rig.received() == 0

    rig.publish(good)
    rig.wait_for(lambda: rig.received() >= 10, "transitions with the first good weights")

    # NaN weights are refused; the actor acts on with the last good ones
    rig.publish(_filled(good, np.nan))
    rig.wait_for(lambda: rig.status().get("refused_weights", 0) >= 2, "the NaN weights refused")
    acting = rig.received()
    rig.wait_for(lambda: rig.received() >= acting + 10, "transitions with the last good weights")

    # finite weights whose actions are not: the robot holds, nothing goes to the learner
    bad_version = rig.publish(_filled(good, 3e38, alternate_head=True))
    rig.wait_for(lambda: rig.status().get("bad_actions", 0) >= 1, "the non-finite action refused")
    rig.assert_robot_holds()
    status = rig.status()
    assert status["weights_version"] == bad_version and status["held_steps"] >= 8
    assert "non-finite action" in status["phase"]
    assert rig.actor.poll() is None
    rig.wait_for(lambda: rig.received() == status["env_steps"], "every transition sent before the hold")
    held_at = rig.received()
    rig.wait_for(lambda: rig.held_steps() >= status["held_steps"] + 3, "more held steps")
    assert rig.received() == held_at

    # good weights again: the actor acts again
    rig.publish(good)
    rig.wait_for(lambda: rig.received() >= held_at + 10, "transitions after newer good weights")
    assert rig.all_actions_finite()
    assert "not finite" in rig.log() and "gave the non-finite action" in rig.log()
    rig.actor.send_signal(signal.SIGINT)
    assert rig.actor.wait(30) == 0, rig.log()[-3000:]
    final = rig.status()
    assert final["done"] and final["refused_weights"] == 2 and final["bad_actions"] == 1
    assert "Traceback" not in rig.log()


def test_stale_weights_are_reported_and_pause_the_robot(rig):
    rig.start_actor("--stale-weights-s", "2", "--pause-on-stale-weights")
    rig.publish(rig.agent, training=1.0, checkpoint_failing=1.0)
    rig.wait_for(lambda: rig.received() >= 5, "the first transitions", 90)
    rig.wait_for(lambda: rig.status().get("weights_stale"), "the weights reported stale")
    assert rig.status()["weights_age_s"] >= 2
    rig.assert_robot_holds()
    sent = rig.status()["env_steps"]
    rig.wait_for(lambda: rig.received() == sent, "every transition sent before the pause")
    held = rig.held_steps()
    rig.wait_for(lambda: rig.held_steps() >= held + 3, "more held steps")
    assert rig.received() == sent and rig.status()["env_steps"] == sent
    log = rig.log()
    assert "no new weights for" in log and "learner reports failing checkpoints" in log

    rig.publish(rig.agent, training=1.0)
    rig.wait_for(lambda: rig.received() >= sent + 5, "transitions after newer weights")
    rig.wait_for(lambda: rig.status().get("weights_stale") is False, "the weights no longer stale")


def test_weights_are_stale_only_while_the_learner_trains_and_transitions_go_out():
    weights = WeightsSlot()
    assert weights.age(100.0) is None and not weights.stale(100.0, 10.0)
    weights.version, weights.received_at, weights.meta = 0, 100.0, {"training": 1.0}
    assert not weights.stale(200.0, 10.0) and weights.age(200.0) == 100.0  # nothing sent: the learner owes nothing
    weights.sent(200.0)
    assert not weights.stale(205.0, 10.0) and weights.stale(211.0, 10.0)
    weights.meta = {"training": 0.0}  # still collecting its first transitions: it publishes nothing new
    assert not weights.stale(211.0, 10.0)
