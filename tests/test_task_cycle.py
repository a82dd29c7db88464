"""Task cycles: whose turn it is, counted fallbacks, reset-free demos, and ``serl train`` of the twin's pair."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from robot_servers.twin import models
from serl.cli.record_demos import record_cycle_demos
from serl.data.episodes import episode_count, read_episodes
from serl.envs.franka_env import FrankaEnv, franka_env_under
from serl.envs.rewards import make_reward
from serl.envs.task_cycles import TaskCycle, get_cycle, objects_out_of_reach
from serl.envs.tasks import get_task, make_sim_env
from serl.runtime.cycle import CycleTurns
from serl.runtime.logging import read_status

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CYCLE = "PandaRelocateFwBw"


@dataclasses.dataclass
class _Lane:
    task: str
    env: FrankaEnv
    steps: int = 0
    episodes: int = 0


@pytest.fixture
def pair():
    """The pair's two tasks over one twin, and a count of the twin's scene resets."""
    first = make_sim_env("PandaRelocateFw", seed=0)
    task = get_task("PandaRelocateBw")
    second = FrankaEnv(first.client, task, reward_fn=make_reward(task))
    backend = first.client.backend
    resets = []
    reset_scene = backend.reset_scene
    backend.reset_scene = lambda *a, **k: (resets.append(a), reset_scene(*a, **k))[1]
    yield [_Lane("PandaRelocateFw", first), _Lane("PandaRelocateBw", second)], backend, resets
    first.close()


def _put_cube(backend, xy) -> None:
    with backend._lock:
        backend._set_free_body("cube", [*xy, models.TABLE_TOP + models.CUBE_HALF], [0, 0, 0, 1.0])
        import mujoco

        mujoco.mj_forward(backend.model, backend.data)


def test_turns_alternate_skip_a_task_whose_goal_holds_and_never_reset_the_scene(pair, tmp_path):
    lanes, backend, resets = pair
    turns = CycleTurns(CYCLE, lanes, tmp_path, seed=0)
    lane, _ = turns.next_episode(None, False)
    assert lane.task == "PandaRelocateFw"  # the cube starts in A
    _put_cube(backend, models.RELOCATE_REGIONS["B"])  # as if forward succeeded
    lane, _ = turns.next_episode(lane, True)
    assert lane.task == "PandaRelocateBw" and turns.skipped == 0
    lane, _ = turns.next_episode(lane, False)  # backward failed without moving the cube: forward's goal holds
    assert lane.task == "PandaRelocateBw" and turns.skipped == 1
    assert np.linalg.norm(backend.scene["cube"][:2] - models.RELOCATE_REGIONS["B"]) < 1e-3  # the reset left it
    assert resets == [] and turns.fallbacks == 0
    status = json.loads((tmp_path / "status" / "cycle.json").read_text())
    assert status["turn"] == "PandaRelocateBw" and status["skipped"] == 1 and status["fallbacks"] == 0


def test_a_cube_out_of_reach_or_failures_in_a_row_fall_back_once_each_and_are_counted(pair, tmp_path):
    lanes, backend, resets = pair
    turns = CycleTurns(CYCLE, lanes, tmp_path, seed=0)
    lane, _ = turns.next_episode(None, False)
    _put_cube(backend, (0.75, 0.0))  # beyond the safety box: no task can reach it
    assert "out of reach" in objects_out_of_reach(lane.env)
    lane, _ = turns.next_episode(lane, False)
    assert turns.fallbacks == 1 and len(resets) == 1
    assert np.linalg.norm(backend.scene["cube"][:2] - models.RELOCATE_REGIONS["A"]) < 0.02
    assert lane.task == "PandaRelocateFw"  # the twin's fallback puts the cube in A: forward's turn
    _put_cube(backend, (0.5, 0.0))  # between the regions: both tasks can go on
    limit = get_cycle(CYCLE).fallback_after_failures
    for _ in range(limit - 1):
        lane, _ = turns.next_episode(lane, False)
    assert turns.fallbacks == 1
    lane, _ = turns.next_episode(lane, False)
    assert turns.fallbacks == 2 and len(resets) == 2
    lines = [json.loads(line) for line in (tmp_path / "fallbacks.jsonl").read_text().splitlines()]
    assert [line["fallback"] for line in lines] == [1, 2]
    assert "out of reach" in lines[0]["reason"] and f"{limit} failed episodes in a row" in lines[1]["reason"]


def test_a_cycle_needs_two_different_tasks():
    with pytest.raises(ValueError, match="two different tasks"):
        TaskCycle("Loop", ("PandaRelocateFw", "PandaRelocateFw"))
    with pytest.raises(ValueError, match="unknown task cycle .*did you mean PandaRelocateFwBw"):
        get_cycle("PandaRelocateFwBW")


def test_demos_are_recorded_in_turn_without_scene_resets(tmp_path):
    outs = {task: tmp_path / f"{task}.h5" for task in get_cycle(CYCLE).tasks}
    kept = record_cycle_demos(CYCLE, outs, 2, seed=0)
    assert kept == {"PandaRelocateFw": 2, "PandaRelocateBw": 2}
    for task, path in outs.items():
        assert episode_count(path) == 2
        episodes = list(read_episodes(path))
        assert all(episode.success for episode in episodes)


REACH_MODULE = str(Path(__file__).parent / "runtime_reach_task.py")
SMALL = ["--agent.hidden-dims", "32", "32", "--agent.num-qs", "2", "--num-demos", "0", "--no-display",
         "--min-online-steps", "1000000", "--console.no-enabled",  # the learners store and checkpoint, no updates
         "--task-module", REACH_MODULE, "--run.root", "runs", "--run.name", "r"]


def _serl_train(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "serl.cli.main", "train", "PandaReachTwice", *SMALL, *args],
                                cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _episodes(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_serl_train_runs_a_cycle_with_a_learner_per_task(tmp_path, monkeypatch):
    """Both tasks act in turn, each feeding its own learner; Ctrl-C checkpoints both (the learners only store what
    they get: updates are the learner's own business, tested elsewhere)."""
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax-cache"))
    run_dir = tmp_path / "runs" / "PandaReachTwice" / "r"
    lanes = {task: run_dir / task for task in ("PandaReach", "PandaReachAgain")}
    train = _serl_train(["--env-steps", "100000"], tmp_path, tmp_path / "train.log")
    try:
        deadline = time.monotonic() + 300
        while not all(len(_episodes(d / "episodes.jsonl")) >= 2
                      and read_status(d / "status" / "learner.json").get("env_steps", 0) > 0 for d in lanes.values()):
            assert train.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "both tasks did not act and feed their learners within 300 s"
            time.sleep(0.2)
        train.send_signal(signal.SIGINT)
        assert train.wait(120) == 130, (tmp_path / "train.log").read_text()[-3000:]
    finally:
        if train.poll() is None:
            train.kill()
    episodes = sorted((e for d in lanes.values() for e in _episodes(d / "episodes.jsonl")), key=lambda e: e["time"])
    order = [e["cycle_env_steps"] for e in episodes]
    assert order == sorted(order) and len(set(order)) == len(order)
    for task, d in lanes.items():
        learner = read_status(d / "status" / "learner.json")
        assert (d / "checkpoints" / "agent" / str(learner["checkpoint_step"])).is_dir()
        # one learner per task: each got at most its own task's steps (the other task's would exceed them)
        assert 0 < learner["env_steps"] <= read_status(d / "status" / "actor.json")["env_steps"]
    printed = (tmp_path / "train.log").read_text()
    assert all(f"[train] {task}: checkpoint written" in printed for task in lanes), printed[-2000:]


def test_a_cycle_resumes_its_latest_run_and_refuses_one_without_its_tasks_runs(tmp_path):
    from serl.cli.train import TrainConfig, _cycle_run_dir
    from serl.runtime.config import RunConfig

    cycle = get_cycle(CYCLE)
    for mtime, name in enumerate(("old", "new")):
        (tmp_path / CYCLE / name).mkdir(parents=True)
        (tmp_path / CYCLE / name / "train_config.json").write_text("{}")
        os.utime(tmp_path / CYCLE / name / "train_config.json", (1e9 + mtime, 1e9 + mtime))
    cfg = TrainConfig(task=CYCLE, resume=True, run=RunConfig(root=tmp_path))
    with pytest.raises(ValueError, match=r"--resume: no run of PandaRelocateFwBw to continue .*missing: "
                                         "PandaRelocateFw, PandaRelocateBw"):
        _cycle_run_dir(cfg, cycle)
    for task in cycle.tasks:
        (tmp_path / CYCLE / "new" / task).mkdir()
        (tmp_path / CYCLE / "new" / task / "config.json").write_text("{}")
    run, run_dir = _cycle_run_dir(cfg, cycle)
    assert run.name == "new" and run_dir == tmp_path / CYCLE / "new"


def test_an_actors_lanes_share_one_robot_and_one_teleop_device(tmp_path):
    from runtime_reach_task import REACH  # noqa: F401  (registers PandaReachTwice)
    from serl.console.hub import ConsoleHub
    from serl.runtime.actor import Notices, _close_lanes, build_lanes
    from serl.runtime.config import ActorConfig, EnvConfig

    cfg = ActorConfig(env=EnvConfig(task="PandaReachTwice", task_module=REACH_MODULE), cycle="PandaReachTwice",
                      cycle_ports=(1, 2, 3, 4), agent=dataclasses.replace(ActorConfig().agent, hidden_dims=(8,)))
    lanes = build_lanes(cfg, tmp_path, "browser", ConsoleHub(), "a", Notices(), {})
    try:
        assert [lane.task for lane in lanes] == ["PandaReach", "PandaReachAgain"]
        assert [lane.run_dir for lane in lanes] == [tmp_path / "PandaReach", tmp_path / "PandaReachAgain"]
        first, second = (franka_env_under(lane.env) for lane in lanes)
        assert second.client is first.client and second.task.name == "PandaReachAgain"
        assert first.owns_client and not second.owns_client  # closed once, by the first lane's env
        assert [(lane.net.port, lane.net.weights_port) for lane in lanes] == [(1, 2), (3, 4)]  # nothing listens there
        assert lanes[1].env.teleop is lanes[0].env.teleop
        assert lanes[0].env.owns_teleop and not lanes[1].env.owns_teleop
    finally:
        _close_lanes(lanes, None)
    with pytest.raises(ValueError, match=r"cycle_ports: PandaReachTwice has 2 tasks \(PandaReach, PandaReachAgain\), "
                                         "so 4 values, got 2"):
        build_lanes(dataclasses.replace(cfg, cycle_ports=(1, 2)), tmp_path, "none", None, "a", Notices(), {})
