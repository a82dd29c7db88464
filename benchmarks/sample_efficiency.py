"""Sample efficiency on the twin: ``serl train`` with 20 scripted demos, 3 seeds per task.

Learning curve = success rate of the actor's training episodes (rolling window of 20 episodes) against
env steps, averaged over seeds on a common grid. Writes ``<out>/sample_efficiency.json`` and ``.png`` and
prints one JSON object: per task the env steps at which the mean curve first reaches 50 / 80 / 90 %
(null when it does not within the budget), the final success rate, the success rate of all training episodes in
the last 2,000 env steps, the deterministic policy's success on ``--eval-episodes`` episodes from each final
checkpoint (``serl eval``), and wall time.

Targets: PandaPickCube state ≥ 90 % within 10k env steps; PandaPickCubePixels (wrist and front cameras, proprio,
no object state) ≥ 80 % within 90 minutes of wall time on this machine, for every seed, counted from the start of
``serl train`` (demo recording and compiles included): ``wall_minutes_to_80pct`` per seed, and a second panel of
the curves against wall time; PandaPegInsertion pixels within 40k env steps. ``--quick`` is a smoke run (one
seed, 2 demos, a few hundred steps) for CI.

``PandaRelocateFwBw`` is a task cycle (reset-free forward–backward relocation): each direction's curve is
taken against the cycle's total env steps, the cycle's ``env_steps_to_80pct`` is the later of the two
directions', and the report adds the counted fallback resets (in all, and per 50 episodes after the first 5k
env steps). Its target is ≥ 80 % for both directions within 40k env steps; it has no ``serl eval`` (a direction
alone would start from a reset scene). ``--stop-after-target N`` stops a cycle's run N env steps after both
directions reached 80 %, so curves end where runs stopped (the mean over seeds ends with the shortest run);
``--from-runs DIR`` reports on runs already trained (stopped by hand, for instance) instead of training.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from serl.runtime.logging import read_status

# name -> (task, pixels, env steps, target env steps to TARGET_LEVEL (90 % unless named there))
TASKS = {
    "PandaPickCube": ("PandaPickCube", False, 10_000, 10_000),
    "PandaPickCubePixels": ("PandaPickCube", True, 10_000, 10_000),
    "PandaPegInsertionPixels": ("PandaPegInsertion", True, 40_000, 40_000),
    "PandaRelocateFwBw": ("PandaRelocateFwBw", False, 40_000, 40_000),
    "PandaHandover": ("PandaHandover", False, 30_000, 30_000),
}
TARGET_LEVEL = {"PandaHandover": 0.8}
CYCLES = {"PandaRelocateFwBw": ("PandaRelocateFw", "PandaRelocateBw")}
WALL_TARGETS = {"PandaPickCubePixels": 90.0}  # minutes to 80 % for every seed
CYCLE_LEVEL = 0.8
WINDOW = 20
LEVELS = (0.5, 0.8, 0.9)


def train_runs(task: str, pixels: bool, steps: int, seeds: int, demos: int, root: Path, extra: list[str],
               parallel: int = 1, stop_when=None) -> list[Path]:
    """``serl train`` once per seed, ``parallel`` at a time; the run directories in seed order. ``stop_when(run_dir)``
    True stops that run early (Ctrl-C: it checkpoints and exits 130)."""
    runs, running = [], []
    for seed in range(seeds):
        name = f"{task}{'-pixels' if pixels else ''}-seed{seed}"
        args = [sys.executable, "-m", "serl.cli.main", "train", task, "--num-demos", str(demos), "--env-steps",
                str(steps), "--run.root", str(root), "--run.name", name, "--run.seed", str(seed), "--no-display",
                "--console.no-enabled", *extra]
        if pixels:
            args.append("--pixels")
        log = root / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as handle:
            proc = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT)
        runs.append(root / task / name)
        running.append({"seed": seed, "log": log, "proc": proc, "run_dir": runs[-1], "stopped": False})
        while len(running) >= parallel or (seed == seeds - 1 and running):
            for run in list(running):
                code = run["proc"].poll()
                if code is None:
                    if stop_when is not None and not run["stopped"] and stop_when(run["run_dir"]):
                        run["proc"].send_signal(signal.SIGINT)
                        run["stopped"] = True
                    continue
                running.remove(run)
                if code != 0 and not (run["stopped"] and code == 130):
                    raise RuntimeError(f"serl train {task} seed {run['seed']} failed:\n{run['log'].read_text()[-3000:]}")
            time.sleep(1.0)
    return runs


def episode_log(run_dir: Path) -> list[dict]:
    """The actor's per-episode records (episodes.jsonl)."""
    lines = (run_dir / "episodes.jsonl").read_text().splitlines() if (run_dir / "episodes.jsonl").exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def late_success(run_dir: Path, steps: int, window: int = 2000) -> float | None:
    """Success rate of all training episodes that ended in the last ``window`` env steps."""
    late = [e["episode/success"] for e in episode_log(run_dir) if e["env_steps"] > steps - window]
    return float(np.mean(late)) if late else None


def eval_success(run_dir: Path, episodes: int) -> float:
    """The final checkpoint's deterministic success rate (``serl eval``)."""
    args = [sys.executable, "-m", "serl.cli.main", "eval", "--run-dir", str(run_dir), "--episodes", str(episodes)]
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"serl eval {run_dir} failed:\n{result.stderr[-2000:]}")
    return float(json.loads(result.stdout.strip().splitlines()[-1])["success_rate"])


def rolling_success(episodes: list[dict]) -> np.ndarray:
    """Success rate over the last ``WINDOW`` episodes (fewer at the start), after each episode."""
    success = np.array([e["episode/success"] for e in episodes], dtype=float)
    return np.array([success[max(0, i - WINDOW + 1): i + 1].mean() for i in range(len(success))])


def first_reaching(episodes: list[dict], level: float) -> dict | None:
    """The first episode after which a full window's success rate is at least ``level`` (None: none)."""
    rolling = rolling_success(episodes)
    return next((e for i, e in enumerate(episodes) if i + 1 >= WINDOW and rolling[i] >= level), None)


def on_grid(at: np.ndarray, values: np.ndarray, grid: np.ndarray, end: float | None = None) -> np.ndarray:
    """``values`` (known at the increasing positions ``at``) at each grid point, the last one carried forward
    (0 before the first); NaN beyond ``end``."""
    index = np.searchsorted(at, grid, side="right") - 1
    out = np.where(index >= 0, values[np.clip(index, 0, None)], 0.0)
    return np.where(grid <= end, out, np.nan) if end is not None else out


def curve(run_dir: Path, grid: np.ndarray, steps_key: str = "env_steps", run_steps: int | None = None) -> np.ndarray:
    """Rolling success rate of training episodes, evaluated at each grid step (last value carried forward);
    ``steps_key``: which step count the grid is in (a cycle's task: ``cycle_env_steps``, all tasks together);
    ``run_steps``: the steps the run took, NaN beyond (a run stopped early)."""
    episodes = episode_log(run_dir)
    if not episodes:
        return np.zeros_like(grid, dtype=float)
    return on_grid(np.array([e[steps_key] for e in episodes]), rolling_success(episodes), grid, run_steps)


def run_started(run_dir: Path) -> float:
    """When ``serl train`` started the run: it writes train_config.json before anything else."""
    return (run_dir / "train_config.json").stat().st_mtime


def minutes_since_start(run_dir: Path, episode: dict) -> float:
    return (episode["time"] - run_started(run_dir)) / 60.0


def wall_curve(run_dir: Path, minutes: np.ndarray) -> np.ndarray:
    """Rolling success of training episodes against wall minutes since the run started (NaN after its end)."""
    episodes = episode_log(run_dir)
    if not episodes:
        return np.full_like(minutes, np.nan, dtype=float)
    at = np.array([minutes_since_start(run_dir, e) for e in episodes])
    return on_grid(at, rolling_success(episodes), minutes, at[-1])


def wall_minutes_to(level: float, run_dir: Path) -> float | None:
    """Wall minutes from the run's start to the end of the first episode at which its rolling success reached
    ``level`` (None: never)."""
    episode = first_reaching(episode_log(run_dir), level)
    return None if episode is None else minutes_since_start(run_dir, episode)


def steps_to(levels, grid: np.ndarray, mean_curve: np.ndarray) -> dict[str, int | None]:
    out = {}
    for level in levels:
        hit = np.nonzero(mean_curve >= level)[0]
        out[f"env_steps_to_{int(level * 100)}pct"] = int(grid[hit[0]]) if hit.size else None
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(results) + sum("wall_minutes" in result for result in results.values())
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6), squeeze=False)
    axes = list(axes[0])
    for name, result in results.items():
        ax = axes.pop(0)
        grid = np.array(result["grid"])
        if "directions" not in result:
            for seed_curve in result["curves"]:
                ax.plot(grid, seed_curve, color="tab:blue", alpha=0.3, linewidth=1)
            ax.plot(grid, result["mean_curve"], color="tab:blue", linewidth=2, label="mean over seeds")
        for label, direction in result.get("directions", {}).items():
            line, = ax.plot(grid, np.array(direction["mean_curve"], dtype=float), linewidth=2, label=label)
            for seed_curve in direction["curves"]:
                ax.plot(grid, np.array(seed_curve, dtype=float), color=line.get_color(), alpha=0.3, linewidth=1)
        ax.axhline(result.get("level", 0.9), color="gray", linestyle="--", linewidth=1)
        if result["target_env_steps"] <= grid[-1]:
            ax.axvline(result["target_env_steps"], color="tab:red", linestyle=":", linewidth=1, label="target")
        ax.set(title=name, xlabel="env steps", ylabel=f"success (rolling {WINDOW} episodes)", ylim=(-0.02, 1.02))
        ax.legend(loc="lower right", fontsize=8)
        if "wall_minutes" in result:
            ax = axes.pop(0)
            minutes = np.array(result["wall_minutes"])
            for seed, seed_curve in enumerate(result["wall_curves"]):
                ax.plot(minutes, np.array(seed_curve, dtype=float), linewidth=1.5, label=f"seed {seed}")
            ax.axhline(0.8, color="gray", linestyle="--", linewidth=1)
            ax.axvline(result["target_wall_minutes"], color="tab:red", linestyle=":", linewidth=1, label="target")
            ax.set(title=f"{name}: wall time", xlabel="minutes since `serl train` started",
                   ylabel=f"success (rolling {WINDOW} episodes)", ylim=(-0.02, 1.02))
            ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cycle_steps_run(run_dir: Path, name: str) -> int:
    """The env steps a cycle's run took (all its tasks)."""
    return sum(read_status(run_dir / task / "status" / "actor.json").get("env_steps", 0) for task in CYCLES[name])


def cycle_reached(run_dir: Path, name: str, level: float = CYCLE_LEVEL) -> int | None:
    """The cycle's env step at which every task's rolling success first reached ``level`` (None: not yet)."""
    reached = []
    for task in CYCLES[name]:
        episode = first_reaching(episode_log(run_dir / task), level)
        if episode is None:
            return None
        reached.append(episode["cycle_env_steps"])
    return max(reached)


def stop_after_reached(name: str, margin: int):
    """``train_runs``'s ``stop_when``: ``margin`` env steps after the cycle reached its level."""
    def stop(run_dir: Path) -> bool:
        reached = cycle_reached(run_dir, name)
        return reached is not None and cycle_steps_run(run_dir, name) >= reached + margin
    return stop


def cycle_report(name: str, run_dirs: list[Path], steps: int, target: int) -> tuple[dict, dict]:
    """A task cycle's curves (per direction, against the cycle's env steps, up to where each run stopped) and its
    report entry."""
    run_steps = [cycle_steps_run(run_dir, name) for run_dir in run_dirs]
    grid = np.linspace(0, max(run_steps), 101).astype(int)
    directions, figures = {}, {}
    for task in CYCLES[name]:
        curves = np.stack([curve(run_dir / task, grid, "cycle_env_steps", ran)
                           for run_dir, ran in zip(run_dirs, run_steps)])
        mean_curve = curves.mean(axis=0)  # over all seeds: NaN past the shortest run
        directions[task] = {"curves": np.where(np.isnan(curves), None, curves).tolist(),
                            "mean_curve": np.where(np.isnan(mean_curve), None, mean_curve).tolist()}
        final = mean_curve[np.isfinite(mean_curve)]
        figures[task] = {**steps_to(LEVELS, grid, mean_curve), "final_success_rate": float(final[-1]),
                         "episodes_per_seed": [len(episode_log(run_dir / task)) for run_dir in run_dirs]}
    reached_per_seed = [cycle_reached(run_dir, name) for run_dir in run_dirs]
    fallbacks = [fallback_log(run_dir) for run_dir in run_dirs]
    episodes = [sum(len(episode_log(run_dir / task)) for task in CYCLES[name]) for run_dir in run_dirs]
    late = [late_fallback_rate(run_dir, name) for run_dir in run_dirs]
    report = {
        "env_steps": steps,
        "env_steps_run_per_seed": run_steps,
        # every seed had both directions at 80 % by then (a run may stop once it got there: no common mean curve)
        "env_steps_to_80pct": None if None in reached_per_seed else max(reached_per_seed),
        "env_steps_to_80pct_per_seed": reached_per_seed,
        "directions": figures,
        "fallbacks_per_seed": [len(lines) for lines in fallbacks],
        "episodes_per_seed": episodes,
        "fallbacks_per_50_episodes_after_5k_steps_per_seed": late,
        "fallbacks_per_50_episodes_after_80pct_per_seed": [
            None if at is None else late_fallback_rate(run_dir, name, after=at)
            for run_dir, at in zip(run_dirs, reached_per_seed)],
        "episodes_after_80pct_per_seed": [
            None if at is None else sum(1 for task in CYCLES[name] for e in episode_log(run_dir / task)
                                        if e["cycle_env_steps"] > at)
            for run_dir, at in zip(run_dirs, reached_per_seed)],
        "target_env_steps_to_80pct": target,
        "meets_target": None not in reached_per_seed and max(reached_per_seed) <= target,
        "training_wall_minutes_per_seed": [round(training_minutes(run_dir, name), 1) for run_dir in run_dirs],
    }
    return {"grid": grid.tolist(), "directions": directions, "target_env_steps": target, "level": CYCLE_LEVEL}, report


def training_minutes(run_dir: Path, name: str) -> float:
    """Wall time from the cycle's first to its last finished episode (after demos and the first compiles)."""
    times = [e["time"] for task in CYCLES[name] for e in episode_log(run_dir / task)]
    return (max(times) - min(times)) / 60.0 if times else 0.0


def fallback_log(run_dir: Path) -> list[dict]:
    path = run_dir / "fallbacks.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def late_fallback_rate(run_dir: Path, name: str, after: int = 5000) -> float | None:
    """Fallbacks per 50 episodes among the episodes that ended after ``after`` env steps of the cycle."""
    episodes = sum(1 for task in CYCLES[name] for e in episode_log(run_dir / task) if e["cycle_env_steps"] > after)
    fallbacks = sum(1 for line in fallback_log(run_dir) if line["env_steps"] > after)
    return 50.0 * fallbacks / episodes if episodes else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run: one seed, 2 demos, 200 env steps")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--demos", type=int, default=20)
    parser.add_argument("--steps", type=int, default=0, help="env steps per run (0 = the task's budget)")
    parser.add_argument("--eval-episodes", type=int, default=40, help="deterministic episodes per final checkpoint")
    parser.add_argument("--parallel", type=int, default=1, help="seeds trained at once")
    parser.add_argument("--stop-after-target", type=int, default=0, metavar="STEPS",
                        help="a cycle's run stops STEPS env steps after both directions reached 80 %% (0 = never)")
    parser.add_argument("--out", type=Path, default=Path("sample_efficiency"))
    parser.add_argument("--from-runs", type=Path, default=None, metavar="DIR",
                        help="report on the runs already in DIR (an earlier --out's runs/) instead of training")
    parser.add_argument("--beside", type=Path, action="append", default=[], metavar="JSON",
                        help="also plot the curves of an earlier report (its sample_efficiency.json), left of these")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: extra serl train options")
    args = parser.parse_args()
    extra = [a for a in args.train_args if a != "--"]
    if args.quick:
        args.tasks, args.seeds, args.demos, args.steps, args.eval_episodes = ["PandaPickCube"], 1, 2, 200, 2
        extra = ["--agent.hidden-dims", "64", "64", "--agent.num-qs", "2", "--agent.utd-ratio", "1",
                 "--min-online-steps", "60", "--batch-size", "64", *extra]
    args.out.mkdir(parents=True, exist_ok=True)
    results, report = {}, {"benchmark": "sample_efficiency", "quick": args.quick, "seeds": args.seeds,
                           "demos": args.demos, "curve": f"training-episode success, rolling {WINDOW}", "tasks": {}}
    for name in args.tasks:
        task, pixels, budget, target = TASKS[name]
        steps = args.steps or budget
        stop_when = stop_after_reached(name, args.stop_after_target) if name in CYCLES and args.stop_after_target else None
        if args.from_runs:  # the runs exist (stopped by hand, e.g. at a deadline): report on them as they are
            run_dirs = [args.from_runs / task / f"{task}{'-pixels' if pixels else ''}-seed{seed}"
                        for seed in range(args.seeds)]
        else:
            run_dirs = train_runs(task, pixels, steps, args.seeds, args.demos, args.out / "runs", extra,
                                  args.parallel, stop_when)
        grid = np.linspace(0, steps, 101).astype(int)
        if name in CYCLES:
            results[name], report["tasks"][name] = cycle_report(name, run_dirs, steps, target)
            continue
        curves = np.stack([curve(run_dir, grid) for run_dir in run_dirs])
        ran = [minutes_since_start(run_dir, episode_log(run_dir)[-1]) if episode_log(run_dir) else None
               for run_dir in run_dirs]  # wall minutes each run trained
        mean_curve = curves.mean(axis=0)
        late = [late_success(run_dir, steps) for run_dir in run_dirs]
        late_known = [rate for rate in late if rate is not None]
        evals = [eval_success(run_dir, args.eval_episodes) for run_dir in run_dirs] if args.eval_episodes else []
        results[name] = {"grid": grid.tolist(), "curves": curves.tolist(), "mean_curve": mean_curve.tolist(),
                         "target_env_steps": target, "level": TARGET_LEVEL.get(name, 0.9)}
        report["tasks"][name] = {
            "env_steps": steps,
            **steps_to(LEVELS, grid, mean_curve),
            "final_success_rate": float(mean_curve[-1]),
            "success_last_2000_steps": float(np.mean(late_known)) if late_known else None,
            "success_last_2000_steps_per_seed": late,
            "eval_success_rate": float(np.mean(evals)) if evals else None,
            "eval_success_rate_per_seed": evals,
            f"target_env_steps_to_{round(100 * TARGET_LEVEL.get(name, 0.9))}pct": target,
            "meets_target": bool(mean_curve[grid <= target].max(initial=0.0) >= TARGET_LEVEL.get(name, 0.9)),
            "wall_time_s_per_seed": float(np.mean([60.0 * m for m in ran if m is not None] or [0.0])),
        }
        if name in WALL_TARGETS:
            reached = [wall_minutes_to(0.8, run_dir) for run_dir in run_dirs]
            minutes = np.linspace(0.0, max(ran), 101)
            wall = np.stack([wall_curve(run_dir, minutes) for run_dir in run_dirs])
            results[name].update(wall_minutes=minutes.tolist(), wall_curves=np.where(np.isnan(wall), None, wall).tolist(),
                                 target_wall_minutes=WALL_TARGETS[name], level=0.8)
            report["tasks"][name].update({
                "wall_minutes_to_80pct": None if None in reached else round(max(reached), 1),
                "wall_minutes_to_80pct_per_seed": [None if m is None else round(m, 1) for m in reached],
                "wall_minutes_run_per_seed": [round(m, 1) for m in ran],
                "target_wall_minutes_to_80pct": WALL_TARGETS[name],
                "meets_target": None not in reached and max(reached) <= WALL_TARGETS[name],
            })
    (args.out / "sample_efficiency.json").write_text(json.dumps({"report": report, "curves": results}, indent=1))
    earlier = {}
    for path in args.beside:
        earlier.update({name: curves for name, curves in json.loads(path.read_text())["curves"].items()
                        if name not in results})
    plot({**earlier, **results}, args.out / "sample_efficiency.png")
    report["png"] = str(args.out / "sample_efficiency.png")
    report["curves_json"] = str(args.out / "sample_efficiency.json")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
