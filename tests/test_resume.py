"""``serl train --resume`` after a Ctrl-C: the actor continues the run's counters, episode log, TensorBoard steps
and budget, and its first resumed episode runs with the restored weights, over real processes and sockets."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path


from serl.runtime.logging import read_status

AGENT = ["--agent.hidden-dims", "32", "32", "--agent.num-qs", "2", "--agent.utd-ratio", "1"]
TRAIN = ["train", "gym:Pendulum-v1", "--overrides", "max_episode_steps=20", "--num-demos", "0",
         "--run.root", "runs", "--run.name", "r", "--min-online-steps", "40", "--batch-size", "32",
         "--no-display", *AGENT]


def serl_train(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "serl.cli.main", *TRAIN, *args], cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert proc.poll() is None, f"serl train exited with {proc.returncode} while waiting for {what}"
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def episode_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines()]


def tensorboard_steps(directory: Path, tag: str) -> list[int]:
    """Steps of ``tag``'s scalars in the TFRecord event files of ``directory`` (read with tensorboardX's protos)."""
    from tensorboardX.proto.event_pb2 import Event

    steps = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            steps += [event.step for value in event.summary.value if value.tag == tag]
    return steps


def test_resume_continues_counters_episode_log_budget_and_weights(tmp_path):
    run_dir = tmp_path / "runs" / "gym_Pendulum-v1" / "r"
    first = serl_train(["--env-steps", "100000"], tmp_path, tmp_path / "first.log")
    try:
        wait_for(lambda: read_status(run_dir / "status" / "learner.json").get("updates", 0) > 0
                 and read_status(run_dir / "status" / "actor.json").get("episodes", 0) >= 4, 180,
                 "updates and four episodes", first)
        first.send_signal(signal.SIGINT)
        assert first.wait(120) == 130
    finally:
        if first.poll() is None:
            first.kill()
    printed = (tmp_path / "first.log").read_text()
    stopped = read_status(run_dir / "status" / "learner.json")
    saved = stopped["checkpoint_step"]
    assert f"checkpoint written at env step {saved}" in printed, printed[-2000:]
    assert (run_dir / "checkpoints" / "agent" / str(saved)).is_dir()
    before = episode_log(run_dir)
    assert [e["episode"] for e in before] == list(range(1, len(before) + 1))

    total = saved + 60  # the budget is the run's total: three more 20-step episodes
    second = serl_train(["--env-steps", str(total), "--resume"], tmp_path, tmp_path / "second.log")
    assert second.wait(300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    printed = (tmp_path / "second.log").read_text()
    assert "resumed from checkpoint" in (run_dir / "logs" / "learner.log").read_text()
    assert f"resuming at env step {saved}" in (run_dir / "logs" / "actor.log").read_text()
    assert f"/{total}" in printed and "env_steps=0/" not in printed, printed

    after = episode_log(run_dir)[len(before):]
    assert [e["episode"] for e in after] == [len(before) + 1 + i for i in range(3)]
    assert [e["env_steps"] for e in after] == [saved + 20, saved + 40, saved + 60]
    # the learner published the restored weights (version saved + 1) before the actor's first step
    assert after[0]["weights_version_at_start"] == stopped["weights_version"] + 1, after[0]
    assert read_status(run_dir / "status" / "actor.json")["env_steps"] == total
    resumed_steps = [s for s in tensorboard_steps(run_dir / "tb" / "actor", "episode/return") if s > saved]
    assert resumed_steps == [saved + 20, saved + 40, saved + 60]
    assert min(tensorboard_steps(run_dir / "tb" / "actor", "episode/return")) == before[0]["env_steps"]
