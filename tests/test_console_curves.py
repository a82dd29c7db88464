"""The console's curves: episodes.jsonl read into series (torn lines, discards, resumes, downsampling), the
runs list, the summary PNG and ``serl summary``."""

import json
import os
from pathlib import Path

import pytest

from serl.cli.main import main
from serl.console.curves import list_runs, read_curves, write_summary_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SUCCESSES = [0, 1] * 5 + [1] * 15  # 25 episodes; failures at episodes 1, 3, 5, 7, 9


def episode(n: int, steps: int, success: float, ret: float = 0.0, length: int = 10, intervention: float = 0.0,
            **extra) -> dict:
    """One line as the actor writes it."""
    return {"env_steps": steps, "episode": n, "episode/return": ret, "episode/length": length,
            "episode/success": float(success), "episode/intervention_rate": intervention,
            "timing/step_ms_mean": 1.0, "timing/step_ms_p99": 2.0, "episode/held_steps": 0,
            "weights_version": 3, "weights_version_at_start": 3, **extra}


def write_run(root: Path, task: str, name: str, records: list[dict], tail: str = "") -> Path:
    run_dir = root / task / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    (run_dir / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return run_dir


def test_series_per_episode_with_the_rolling_success_rate_computed_by_hand(tmp_path):
    records = [episode(i + 1, 10 * (i + 1), s, ret=float(i), length=10 + i, intervention=i / 100)
               for i, s in enumerate(SUCCESSES)]
    curves = read_curves(write_run(tmp_path, "PandaPickCube", "r1", records))
    assert (curves["task"], curves["name"], curves["episodes"], curves["discarded"]) == ("PandaPickCube", "r1", 25, 0)
    series = curves["by_steps"]
    assert series["env_steps"] == [10.0 * (i + 1) for i in range(25)]
    assert series["episode"] == [float(i + 1) for i in range(25)]
    assert series["return"] == [float(i) for i in range(25)]
    assert series["length"] == [10.0 + i for i in range(25)]
    assert series["intervention_rate"] == pytest.approx([i / 100 for i in range(25)])
    rate = series["success_rate"]
    assert rate[:4] == pytest.approx([0.0, 1 / 2, 1 / 3, 2 / 4])
    assert rate[9] == pytest.approx(5 / 10)
    assert rate[19] == pytest.approx(15 / 20)  # episodes 1-20: all five failures
    assert rate[21] == pytest.approx(16 / 20)  # episodes 3-22: failures 3, 5, 7, 9
    assert rate[24] == pytest.approx(18 / 20)  # episodes 6-25: failures 7, 9
    assert curves["last"] == {"episode": 25, "env_steps": 250.0, "time": None, "success_rate": pytest.approx(0.9),
                              "return": 24.0, "length": 34.0, "intervention_rate": pytest.approx(0.24)}
    json.dumps(curves, allow_nan=False)


def test_a_torn_last_line_a_missing_file_and_non_finite_values(tmp_path):
    records = [episode(1, 10, 1, ret=float("nan")), episode(2, 20, 0)]
    curves = read_curves(write_run(tmp_path, "T", "torn", records, tail='{"env_steps": 30, "episode": 3, "epi'))
    assert curves["episodes"] == 2
    assert curves["by_steps"]["env_steps"] == [10.0, 20.0]
    assert curves["by_steps"]["return"] == [None, 0.0]  # NaN is no JSON
    json.dumps(curves, allow_nan=False)

    empty = read_curves(tmp_path / "T" / "nothing")
    assert (empty["episodes"], empty["last"], empty["by_time"], empty["wall_time"]) == (0, None, None, False)
    assert empty["by_steps"] == {"env_steps": [], "episode": [], "success_rate": [], "return": [], "length": [],
                                 "intervention_rate": []}


def test_discarded_episodes_are_left_out_in_both_forms(tmp_path):
    lines = [episode(1, 10, 1), episode(2, 20, 0), {"discarded": 2}, episode(3, 30, 1),
             episode(4, 40, 0, discarded=True), episode(5, 50, 0), {"discarded": 99}]
    curves = read_curves(write_run(tmp_path, "T", "d", lines))
    assert curves["episodes"] == 3 and curves["discarded"] == 2
    series = curves["by_steps"]
    assert series["episode"] == [1.0, 3.0, 5.0]
    assert series["env_steps"] == [10.0, 30.0, 50.0]
    assert series["success_rate"] == pytest.approx([1.0, 1.0, 2 / 3])  # the rolling window skips them as well
    assert curves["last"]["episode"] == 5


def test_a_resume_from_an_earlier_checkpoint_supersedes_the_lost_episodes(tmp_path):
    # killed after episode 4, resumed from the checkpoint at episode 2: episodes 3 and 4 are written again
    lines = [episode(1, 10, 0), episode(2, 20, 0), episode(3, 30, 0), episode(4, 40, 0),
             episode(3, 31, 1), {"discarded": 3}, episode(3, 33, 1), episode(4, 44, 1)]
    curves = read_curves(write_run(tmp_path, "T", "resumed", lines))
    assert curves["by_steps"]["episode"] == [1.0, 2.0, 3.0, 4.0]
    assert curves["by_steps"]["env_steps"] == [10.0, 20.0, 33.0, 44.0]
    assert curves["discarded"] == 1


def test_ten_thousand_episodes_are_downsampled_to_bucket_means(tmp_path):
    n = 10_000
    records = [episode(i + 1, 7 * (i + 1), (i // 3) % 2, ret=float(i), length=i % 50, intervention=(i % 4) / 4)
               for i in range(n)]
    curves = read_curves(write_run(tmp_path, "T", "long", records))
    series = curves["by_steps"]
    assert curves["episodes"] == n
    assert all(len(values) == 2000 for values in series.values())  # buckets of 5 episodes
    assert series["episode"][0] == 5.0 and series["episode"][-1] == float(n)
    assert series["env_steps"][-1] == 7.0 * n
    assert series["return"][0] == pytest.approx(sum(range(5)) / 5)
    assert series["return"][-1] == pytest.approx(sum(range(n - 5, n)) / 5)
    assert series["intervention_rate"][1] == pytest.approx((1 + 2 + 3 + 0 + 1) / 4 / 5)  # episodes 6-10
    full = read_curves(tmp_path / "T" / "long", max_points=n)["by_steps"]
    assert len(full["success_rate"]) == n
    assert series["success_rate"] == full["success_rate"][4::5]  # each bucket's last episode's rolling value
    assert read_curves(tmp_path / "T" / "long", max_points=3000)["by_steps"]["episode"][-1] == float(n)
    json.dumps(curves, allow_nan=False)


def test_wall_time_only_where_the_lines_carry_it(tmp_path):
    bare = read_curves(write_run(tmp_path, "T", "bare", [episode(1, 10, 1)]))
    assert bare["by_time"] is None and bare["wall_time"] is False and "time" in bare["wall_time_note"]

    timed = [episode(1, 10, 1), episode(2, 20, 0, time=1000.5), episode(3, 30, 1, time=1010.0)]
    curves = read_curves(write_run(tmp_path, "T", "timed", timed))
    assert curves["wall_time"] is False and curves["wall_time_note"].startswith("1 of 3")
    assert curves["by_time"]["time"] == [1000.5, 1010.0]
    assert curves["by_time"]["episode"] == [2.0, 3.0]
    assert curves["by_time"]["success_rate"] == pytest.approx([0.5, 2 / 3])  # rolling over all episodes
    assert curves["last"]["time"] == 1010.0

    full = read_curves(write_run(tmp_path, "T", "all", [episode(1, 10, 1, time=5.0)]))
    assert full["wall_time"] is True and full["wall_time_note"] is None


def test_list_runs_newest_first_filtered_by_task(tmp_path):
    old = write_run(tmp_path, "PandaPickCube", "old", [episode(i + 1, i + 1, 0) for i in range(30)])
    new = write_run(tmp_path, "PandaPickCube", "new", [episode(1, 10, 1), episode(2, 20, 0), {"discarded": 2},
                                                       episode(3, 30, 1, discarded=True), episode(4, 40, 1)],
                    tail='{"env_st')
    peg = tmp_path / "PandaPegInsertion" / "config-only"
    peg.mkdir(parents=True)
    (peg / "config.json").write_text("{}")
    (tmp_path / "PandaPickCube" / "not-a-run").mkdir()
    (tmp_path / "README.txt").write_text("not a task")
    for run_dir, when in ((old, 1_000), (new, 3_000), (peg, 2_000)):
        for path in run_dir.iterdir():
            os.utime(path, (when, when))

    runs = list_runs(tmp_path)
    assert [(r["task"], r["name"]) for r in runs] == [
        ("PandaPickCube", "new"), ("PandaPegInsertion", "config-only"), ("PandaPickCube", "old")]
    assert runs[0] == {"task": "PandaPickCube", "name": "new", "path": "PandaPickCube/new", "episodes": 2,
                       "success_rate": 1.0, "last_modified": 3_000.0}
    assert runs[1]["episodes"] == 0 and runs[1]["success_rate"] is None
    assert runs[2]["episodes"] == 30 and runs[2]["success_rate"] == 0.0
    assert [r["name"] for r in list_runs(tmp_path, task="PandaPickCube")] == ["new", "old"]
    assert list_runs(tmp_path, task="Nope") == [] and list_runs(tmp_path / "missing") == []

    with open(new / "episodes.jsonl", "a") as handle:  # the torn line completes; the count follows the file
        handle.write('eps": 50, "episode": 5, "episode/success": 0.0}\n')
    assert list_runs(tmp_path, task="PandaPickCube")[0]["episodes"] == 3


def test_list_runs_reads_the_tail_for_a_long_run(tmp_path):
    records = [episode(i + 1, i + 1, 0) for i in range(5_000)] + [episode(5_001 + i, 5_001 + i, 1) for i in range(10)]
    write_run(tmp_path, "T", "long", records)
    (run,) = list_runs(tmp_path)
    assert run["episodes"] == 5_010 and run["success_rate"] == pytest.approx(10 / 20)


def test_summary_png_is_written_atomically_and_reads_back(tmp_path):
    import matplotlib.image

    records = [episode(i + 1, 10 * (i + 1), s, ret=float(i)) for i, s in enumerate(SUCCESSES)]
    run_dir = write_run(tmp_path, "PandaPickCube", "r1", records)
    path = write_summary_png(run_dir)
    assert path == run_dir / "summary.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "episodes.jsonl", "summary.png"]
    assert write_summary_png(run_dir) == path  # replaces the old one

    empty = tmp_path / "T" / "empty"
    empty.mkdir(parents=True)
    (empty / "config.json").write_text("{}")
    assert write_summary_png(empty) is None
    assert sorted(p.name for p in empty.iterdir()) == ["config.json"]


def test_serl_summary_command(tmp_path, capsys):
    run_dir = write_run(tmp_path, "PandaPickCube", "r1", [episode(i + 1, 10 * (i + 1), s) for i, s in enumerate(SUCCESSES)])
    assert main(["summary", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert (run_dir / "summary.png").read_bytes()[:8] == PNG_SIGNATURE
    assert f"wrote {run_dir / 'summary.png'}" in out and "90%" in out

    plain = tmp_path / "plain"
    plain.mkdir()
    assert main(["summary", str(plain)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"serl summary: {plain} is not a run folder (it has neither episodes.jsonl nor config.json)"
    assert main(["summary", str(tmp_path / "missing")]) == 2
    assert "is not a run folder" in capsys.readouterr().err

    (tmp_path / "T" / "empty").mkdir(parents=True)
    (tmp_path / "T" / "empty" / "config.json").write_text("{}")
    assert main(["summary", str(tmp_path / "T" / "empty")]) == 1
    assert "nothing to plot" in capsys.readouterr().err

    assert main(["--help"]) == 0
    assert "summary" in capsys.readouterr().out
