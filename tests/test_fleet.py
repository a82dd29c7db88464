"""Several actors, one learner, with real processes and sockets: a killed actor restarted under its id loses
nothing acknowledged and stores nothing twice while the other acts on undisturbed; a second live actor under
one id is refused with the reason; ``serl train --actors 2`` splits the budget and survives a killed actor.

An actor refused for another task's config: tests/test_transport_security.py
(``test_serl_actor_refused_by_the_learner_exits_with_one_line``, ``test_a_config_refusal_names_the_fields_that_differ``).
"""

from __future__ import annotations

import json
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from test_learner_durability import Process, free_port, send_at_robot_pace

from serl.runtime.logging import read_status

pytestmark = pytest.mark.timeout(300)

HERE = pathlib.Path(__file__).parent
TASK = "PandaPickCube"
STATE_SIZE, ACTION_SIZE = 26, 7  # PandaPickCube's state observation and action, as the learner's spec checks them
ACTOR_TIMEOUT_S = 5.0  # the learner's (LearnerServerConfig.actor_timeout_s)


def tagged_transition(life: int, i: int) -> dict:
    """Transition ``i`` of one actor life, its ids in the first two state entries."""
    from serl.data.transition import make_transition

    def obs(k: int) -> dict:
        state = np.zeros(STATE_SIZE, np.float32)
        state[:3] = (i, life, k)
        return {"state": state}

    return make_transition(obs(0), np.zeros(ACTION_SIZE, np.float32), 0.0, obs(1), terminated=False,
                           truncated=i % 50 == 49, intervened=False)


def actor_main(actor_id: str, life: int, count: int, request_port: int, weights_port: int, stop_file: str,
               period_s: float) -> None:
    """Stream numbered transitions (``count`` of them, or until ``stop_file`` exists) at a robot's pace as actor
    ``actor_id``, printing the acknowledged count whenever it grows, then the reconnect count."""
    from serl.agents.sac import SACConfig
    from serl.runtime.config import EnvConfig, run_config_digests, run_config_hash
    from serl.transport import ActorClient, ActorClientConfig

    env, agent = EnvConfig(task=TASK), SACConfig()
    client = ActorClient(ActorClientConfig(
        actor_id=actor_id, config_hash=run_config_hash(env, agent), config_digests=run_config_digests(env, agent),
        request_port=request_port, weights_port=weights_port, batch_size=8, flush_interval_s=0.01,
    ))
    acked, i = -1, 0
    while i < count and not pathlib.Path(stop_file).exists():
        acked = send_at_robot_pace(client, tagged_transition(life, i), acked)
        i += 1
        time.sleep(period_s)
    assert client.flush(120)
    stats = client.stats()
    print(f"acked {stats['acked']}\nsent {i}\nreconnects {stats['reconnects']}\ndone", flush=True)
    client.close()


def start_actor(actor_id: str, life: int, ports: tuple[int, int], tmp: pathlib.Path, count: int = 10**9,
                period_s: float = 0.0) -> Process:
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_fleet as t; "
            f"t.actor_main({actor_id!r}, {life}, {count}, {ports[0]}, {ports[1]}, "
            f"{str(tmp / f'stop-{life}')!r}, {period_s})")
    return Process([sys.executable, "-c", code], tmp / f"actor-{actor_id}-life{life}.log")


def start_learner(root: pathlib.Path, ports: tuple[int, int]) -> Process:
    """A learner that stores what it gets and never trains (no updates to compile or wait for)."""
    args = [sys.executable, "-m", "serl.cli.main", "learner", "--env.task", TASK, "--run.root", str(root),
            "--run.name", "r", "--run.logger", "none", "--net.port", str(ports[0]), "--net.weights-port",
            str(ports[1]), "--min-online-steps", "1000000", "--checkpoint-every", "1000000", "--quiet"]
    learner = Process(args, root / "learner.log")
    learner.wait_for(r"listening on")
    return learner


def stored_ids(run_dir: pathlib.Path) -> list[tuple[int, int]]:
    """(life, i) of every transition in the learner's online replay log."""
    from serl.data.replay_log import ReplayLog

    records = ReplayLog(run_dir / "replay" / "online").replay()
    next(records)
    return [(int(t["observations"]["state"][1]), int(t["observations"]["state"][0]))
            for record in records for t in record["transitions"]]


def test_an_actor_killed_and_restarted_under_its_id_loses_nothing_acknowledged_and_the_other_acts_on(tmp_path):
    ports = (free_port(), free_port())
    learner = start_learner(tmp_path, ports)
    steady = start_actor("2", life=2, ports=ports, tmp=tmp_path, period_s=0.005)  # streams until told to stop
    killed = start_actor("1", life=1, ports=ports, tmp=tmp_path)
    restarted = None
    try:
        killed.wait_acked(300)
        steady.wait_acked(100)
        # the restart says hello before the kill: refused while the old session lives, let in once it is silent
        restarted = start_actor("1", life=3, ports=ports, tmp=tmp_path, count=200)
        restarted.wait_for("in use by a live actor")
        killed.kill()  # SIGKILL: its unacknowledged tail dies with it
        acked_before_kill = killed.acked()
        steady_at_kill = steady.acked()
        restarted.wait_for(r"\bdone\b", timeout=120)
        assert steady.proc.poll() is None, steady.text()[-3000:]
        (tmp_path / "stop-2").touch()
        steady.wait_for(r"\bdone\b", timeout=120)
        learner.kill(signal.SIGTERM)
        assert learner.proc.returncode == 0, learner.text()[-3000:]
    finally:
        for process in (learner, steady, killed, restarted):
            if process is not None and process.proc.poll() is None:
                process.kill()
    ids = stored_ids(tmp_path / TASK / "r")
    assert len(ids) == len(set(ids)), "a transition was stored twice"
    lost = sorted(set(range(acked_before_kill)) - {i for life, i in ids if life == 1})
    assert lost == [], f"{len(lost)} of {acked_before_kill} acknowledged transitions of the killed actor lost"
    assert {i for life, i in ids if life == 3} == set(range(200))
    sent = int(re.search(r"sent (\d+)", steady.text())[1])
    assert {i for life, i in ids if life == 2} == set(range(sent)) and sent > steady_at_kill
    assert "reconnects 0" in steady.text() and "refused" not in steady.text(), steady.text()[-2000:]


def test_a_second_live_actor_under_one_id_is_refused_with_the_reason_and_the_first_acts_on(tmp_path):
    from serl.agents.sac import SACConfig
    from serl.runtime.config import EnvConfig, run_config_digests, run_config_hash
    from serl.transport import ActorClient, ActorClientConfig, LearnerServer, LearnerServerConfig

    env, agent = EnvConfig(task=TASK), SACConfig()
    server = LearnerServer(LearnerServerConfig(
        request_port=0, weights_port=0, config_hash=run_config_hash(env, agent),
        config_digests=run_config_digests(env, agent), actor_timeout_s=1.0,
    )).start()
    first = ActorClient(ActorClientConfig(actor_id="arm", config_hash=run_config_hash(env, agent),
                                          request_port=server.request_port, weights_port=server.weights_port,
                                          batch_size=4, flush_interval_s=0.01))
    done = threading.Event()

    def stream() -> None:
        i = 0
        while not done.is_set():
            first.send(tagged_transition(0, i))
            i += 1
            time.sleep(0.01)

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    try:
        assert first.wait_connected(30)
        result = subprocess.run(
            [sys.executable, "-m", "serl.cli.main", "actor", "--env.task", TASK, "--actor-id", "arm",
             "--net.port", str(server.request_port), "--net.weights-port", str(server.weights_port),
             "--run.root", str(tmp_path), "--run.logger", "none", "--weights-timeout", "120", "--quiet"],
            capture_output=True, text=True, timeout=200, cwd=tmp_path,
        )
        acked_after_refusal = first.stats()["acked"]
        deadline = time.monotonic() + 30
        while first.stats()["acked"] < acked_after_refusal + 20:
            assert time.monotonic() < deadline, first.stats()
            time.sleep(0.05)
    finally:
        done.set()
        streamer.join(5)
        first.close()
        server.close()
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"serl actor: learner refused actor 'arm': actor id 'arm' is in use by a live actor "
                        r"\(session [0-9a-f]{8}…, heard \d+\.\d s ago\); give each actor its own --actor-id", last), \
        result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert first.stats()["reconnects"] == 0


NO_UPDATES = ["--min-online-steps", "1000000", "--no-task-defaults"]  # the learner stores: nothing to compile there
TRAIN = ["train", TASK, "--no-display", "--num-demos", "2", "--min-online-steps", "50", "--batch-size", "32",
         "--agent.hidden-dims", "32", "32", "--agent.num-qs", "2", "--agent.utd-ratio", "1", "--run.root", "runs",
         "--run.logger", "none", "--overrides", "max_episode_steps=40", "--console.no-enabled"]


def test_train_with_two_actors_splits_the_budget_and_logs_each_actor(tmp_path):
    result = subprocess.run([sys.executable, "-m", "serl.cli.main", *TRAIN, *NO_UPDATES, "--actors", "2",
                             "--env-steps", "161", "--run.name", "two"], capture_output=True, text=True, timeout=280,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "runs" / TASK / "two"
    assert {p.name for p in (run_dir / "logs").iterdir()} == {"learner.log", "actor-1.log", "actor-2.log"}
    assert {p.name for p in (run_dir / "launch").glob("actor*.json")} == {"actor-1.json", "actor-2.json"}
    launched = [json.loads((run_dir / "launch" / f"actor-{i}.json").read_text()) for i in (1, 2)]
    assert [c["max_env_steps"] for c in launched] == [81, 80] and [c["run"]["seed"] for c in launched] == [0, 1]
    statuses = [read_status(run_dir / "status" / f"actor-{i}.json") for i in (1, 2)]
    assert [s["env_steps"] for s in statuses] == [81, 80] and all(s["done"] for s in statuses)
    assert read_status(run_dir / "status" / "learner.json")["env_steps"] == 161
    episodes = [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines()]
    assert {e["actor"] for e in episodes} == {"1", "2"}
    assert "per_actor=1:81,2:80" in result.stdout, result.stdout[-2000:]


def test_train_goes_on_when_one_of_its_actors_is_killed(tmp_path):
    run_dir = tmp_path / "runs" / TASK / "kill"
    train = subprocess.Popen([sys.executable, "-m", "serl.cli.main", *TRAIN, *NO_UPDATES, "--actors", "2",
                              "--env-steps", "200", "--run.name", "kill"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        pids_file = run_dir / "launch" / "pids.json"
        deadline = time.monotonic() + 200
        while not pids_file.exists():
            assert time.monotonic() < deadline and train.poll() is None, "serl train started no actors"
            time.sleep(0.05)
        pids = json.loads(pids_file.read_text())
        assert set(pids) == {"learner", "actor-1", "actor-2"}
        subprocess.run(["kill", "-9", str(pids["actor-2"])], check=True)  # while actor 1 is still starting
        out, _ = train.communicate(timeout=250)
    finally:
        if train.poll() is None:
            train.kill()
    assert train.returncode == 1, out[-3000:]
    assert "[train] actor-2 exited with code -9 (1 of 2 actors act on); see runs/PandaPickCube/kill/logs/actor-2.log" \
        in out, out[-3000:]
    first = read_status(run_dir / "status" / "actor-1.json")
    assert first["env_steps"] == 100 and first["done"], first  # the other actor spent its whole share
    assert "checkpoint written" in out


def episode_line(actor: str, steps: int, episode: int, success: float) -> str:
    return json.dumps({"env_steps": steps, "episode": episode, "time": 1000.0 + steps, "actor": actor,
                       "episode/return": success, "episode/length": 50, "episode/success": success})


def test_curves_count_all_actors_and_draw_one_thin_curve_each(tmp_path):
    from serl.console.curves import episode_records, list_runs, read_curves, write_summary_png

    run_dir = tmp_path / "runs" / TASK / "two"
    run_dir.mkdir(parents=True)
    lines = []
    for episode in range(1, 31):  # interleaved: each actor numbers its own episodes from 1
        lines.append(episode_line("1", 50 * episode, episode, 1.0))
        lines.append(episode_line("2", 50 * episode, episode, 0.0))
    (run_dir / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    curves = read_curves(run_dir)
    assert curves["episodes"] == 60 and curves["last"]["env_steps"] == 3000 and curves["last"]["episode"] == 60
    assert curves["by_steps"]["env_steps"][:3] == [50, 100, 150]  # each actor counted at its latest episode end
    assert curves["last"]["success_rate"] == 0.5
    assert set(curves["actors"]) == {"1", "2"} and curves["actors"]["1"]["episodes"] == 30
    assert curves["actors"]["1"]["by_steps"]["success_rate"][-1] == 1.0
    assert curves["actors"]["2"]["by_steps"]["env_steps"][-1] == 3000  # on the axis of all actors' steps
    assert [e["actor"] for e in episode_records(run_dir)[:2]] == ["1", "2"]
    assert list_runs(tmp_path / "runs")[0]["success_rate"] == 0.5
    assert write_summary_png(run_dir).stat().st_size > 0
    (run_dir / "episodes.jsonl").write_text("\n".join(line.replace(', "actor": "1"', "") for line in lines[::2]))
    assert "actors" not in read_curves(run_dir)  # one actor without an id: the single-actor curves


def test_the_progress_display_sums_the_actors_and_shows_each(tmp_path, capsys):
    from rich.console import Console

    from serl.runtime.logging import TrainProgress, write_status

    status = tmp_path / "status"
    progress = TrainProgress(tmp_path, 1000, live=False, actors=2)
    write_status(status / "learner.json", {"updates": 0})
    write_status(status / "actor-1.json", {"env_steps": 0, "phase": "compiling the policy"})
    progress.update()
    assert "actor 1: compiling the policy; 1 more actor: starting" in capsys.readouterr().out
    write_status(status / "learner.json", {"updates": 40, "online_size": 300, "demo_size": 50})
    write_status(status / "actor-1.json", {"env_steps": 200, "episodes": 4, "success_rate": 0.5, "return": 1.0,
                                           "weights_version": 3})
    write_status(status / "actor-2.json", {"env_steps": 100, "episodes": 2, "success_rate": 0.0, "return": 0.0,
                                           "weights_version": 2})
    progress.update()
    progress.close()
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("[train] env_steps=300/1000 episodes=6 success_(last_20)=25% return=0.50 updates=40")
    assert line.endswith("weights=3 online_buffer=300 demo_buffer=50 critic_loss=- temperature=- "
                         "per_actor=1:200,2:100")
    console = Console(width=200, record=True)
    console.print(progress._render(read_status(status / "learner.json"), progress.actor_statuses()))
    rows = [row.split("│")[1:3] for row in console.export_text().splitlines() if row.count("│") > 5]
    assert [[cell.strip() for cell in row] for row in rows] == [["all", "300/1000"], ["1", "200"], ["2", "100"]]
