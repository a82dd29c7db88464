"""An acknowledged transition is on disk: real `serl learner` processes killed with SIGKILL and resumed, actors
killed mid-stream, state and camera-sized transitions; every acknowledged transition is counted afterwards."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from serl.data.replay_log import ReplayLog

pytestmark = pytest.mark.timeout(300)

HERE = pathlib.Path(__file__).parent
TASKS = {"state": ("gym:Pendulum-v1", False), "pixels": ("PandaPickCube", True)}
EPISODE = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _transition(kind: str, run: int, i: int) -> dict:
    from serl.data.transition import make_transition

    step = i % EPISODE

    def obs(k: int) -> dict:
        if kind == "state":
            return {"state": np.array([i, run, k], np.float32)}
        frame = np.full((128, 128, 3), (i + k + 17 * run) % 251, np.uint8)
        return {"state": np.array([i, run] + [k] * 17, np.float32), "front": frame, "wrist": frame[::-1].copy()}

    last = step == EPISODE - 1
    return make_transition(obs(0), np.zeros(1 if kind == "state" else 7, np.float32), 0.0, obs(1),
                           terminated=False, truncated=last, intervened=False)


def actor_main(kind: str, run: int, count: int, request_port: int, weights_port: int) -> None:
    """Stream ``count`` numbered transitions, printing the acknowledged count whenever it grows."""
    from serl.agents.sac import SACConfig
    from serl.runtime.config import EnvConfig, run_config_hash
    from serl.transport import ActorClient, ActorClientConfig

    task, pixels = TASKS[kind]
    client = ActorClient(ActorClientConfig(
        actor_id=f"robot-{run}", config_hash=run_config_hash(EnvConfig(task=task, pixels=pixels), SACConfig()),
        request_port=request_port, weights_port=weights_port, batch_size=8, flush_interval_s=0.01,
        request_timeout_s=1.0, heartbeat_interval_s=0.3, retain_bytes=2**20,  # retention is not what keeps data
    ))
    acked = -1
    for i in range(count):
        acked = send_at_robot_pace(client, _transition(kind, run, i), acked)
    assert client.flush(120)
    print(f"acked {client.stats()['acked']}", flush=True)
    print("done", flush=True)
    client.close()


def send_at_robot_pace(client, transition: dict, acked: int) -> int:
    """Send one transition, wait while more than 64 are pending (a robot's pace: the learner keeps up) and print
    the acknowledged count when it differs from ``acked``; returns the count."""
    client.send(transition)
    while client.stats()["pending"] > 64:
        time.sleep(0.005)
    if (now := client.stats()["acked"]) != acked:
        print(f"acked {now}", flush=True)
    return now


class Process:
    """A child process whose output lines are read as they come."""

    def __init__(self, args: list[str], log: pathlib.Path):
        self.log = log
        self.handle = open(log, "w")
        self.proc = subprocess.Popen(args, stdout=self.handle, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, pattern: str, timeout: float = 120.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.text())
            if match:
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not seen; output:\n{self.text()[-3000:]}")

    def acked(self) -> int:
        found = re.findall(r"acked (\d+)", self.text())
        return int(found[-1]) if found else 0

    def wait_acked(self, count: int, timeout: float = 120.0) -> int:
        deadline = time.monotonic() + timeout
        while self.acked() < count:
            assert time.monotonic() < deadline and self.proc.poll() is None, self.text()[-3000:]
            time.sleep(0.02)
        return self.acked()

    def kill(self, sig=signal.SIGKILL) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)
        self.handle.close()


def _learner(kind: str, root: pathlib.Path, ports: tuple[int, int], log: pathlib.Path, resume: bool) -> Process:
    task, pixels = TASKS[kind]
    args = [sys.executable, "-m", "serl.cli.main", "learner", "--env.task", task,
            "--env.pixels" if pixels else "--env.no-pixels", "--run.root", str(root), "--run.name", "r",
            "--run.logger", "none", "--net.port", str(ports[0]), "--net.weights-port", str(ports[1]),
            "--min-online-steps", "1000000", "--checkpoint-every", "1000000", "--quiet"]
    process = Process(args + (["--resume"] if resume else []), log)
    process.wait_for(r"listening on")
    return process


def _actor(kind: str, run: int, count: int, ports: tuple[int, int], log: pathlib.Path) -> Process:
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_learner_durability as t; "
            f"t.actor_main({kind!r}, {run}, {count}, {ports[0]}, {ports[1]})")
    return Process([sys.executable, "-c", code], log)


def _logged_ids(run_dir: pathlib.Path) -> list[tuple[int, int]]:
    records = ReplayLog(run_dir / "replay" / "online").replay()
    next(records)
    return [(int(t["observations"]["state"][1]), int(t["observations"]["state"][0]))
            for record in records for t in record["transitions"]]


@pytest.mark.parametrize("kind,counts", [("state", (400, 900, 100_000, 300)), ("pixels", (60, 140, 5_000, 60))])
def test_no_acknowledged_transition_is_lost_when_either_side_is_killed(tmp_path, kind, counts):
    first_kill, actor_kill, total, second_run = counts
    ports = (free_port(), free_port())
    task, _ = TASKS[kind]
    run_dir = tmp_path / task.replace(":", "_") / "r"
    learner = _learner(kind, tmp_path, ports, tmp_path / "learner1.log", resume=False)
    actor = _actor(kind, 0, total, ports, tmp_path / "actor0.log")
    try:
        actor.wait_acked(first_kill)
        learner.kill()  # no checkpoint was ever written: only the logs hold the data
        learner = _learner(kind, tmp_path, ports, tmp_path / "learner2.log", resume=True)
        acked_run0 = actor.wait_acked(actor_kill)
        actor.kill()  # its unacknowledged tail dies with it
        acked_run0 = max(acked_run0, actor.acked())
        second = _actor(kind, 1, second_run, ports, tmp_path / "actor1.log")
        second.wait_for("done")
        learner.kill(signal.SIGTERM)
        assert learner.proc.returncode == 0, learner.text()[-3000:]
    finally:
        for process in (learner, actor):
            if process.proc.poll() is None:
                process.kill()
    ids = _logged_ids(run_dir)
    assert len(ids) == len(set(ids)), "a transition was stored twice"
    run0 = {i for run, i in ids if run == 0}
    lost = [i for i in range(acked_run0) if i not in run0]
    assert lost == [], f"{len(lost)} of {acked_run0} acknowledged transitions lost"
    print(f"\n{kind}: {acked_run0} + {second_run} acknowledged, {len(ids)} stored, 0 lost, 0 duplicated")
    assert {i for run, i in ids if run == 1} == set(range(second_run))
    assert not list(run_dir.rglob(".tmp-*")) and not list(run_dir.rglob("*orbax-checkpoint-tmp*"))
