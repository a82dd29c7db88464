"""Sample efficiency on the twin: ``serl train`` with 20 scripted demos, 3 seeds per task.

Learning curve = success rate of the actor's training episodes (rolling window of 20 episodes) against
env steps, averaged over seeds on a common grid. Writes ``<out>/sample_efficiency.json`` and ``.png`` and
prints one JSON object: per task the env steps at which the mean curve first reaches 50 / 80 / 90 %
(null when it does not within the budget), the final success rate, the success rate of all training episodes in
the last 2,000 env steps, the deterministic policy's success on ``--eval-episodes`` episodes from each final
checkpoint (``serl eval``), and wall time.

Targets: PandaPickCube state ≥ 90 % within 10k env steps; pixels within 30k; PandaPegInsertion
pixels within 40k. ``--quick`` is a smoke run (one seed, 2 demos, a few hundred steps) for CI.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# name -> (task, pixels, env steps, target env steps to 90 %)
TASKS = {
    "PandaPickCube": ("PandaPickCube", False, 10_000, 10_000),
    "PandaPickCubePixels": ("PandaPickCube", True, 30_000, 30_000),
    "PandaPegInsertionPixels": ("PandaPegInsertion", True, 40_000, 40_000),
}
WINDOW = 20
LEVELS = (0.5, 0.8, 0.9)


def train_run(task: str, pixels: bool, steps: int, seed: int, demos: int, root: Path, extra: list[str]) -> Path:
    name = f"{task}{'-pixels' if pixels else ''}-seed{seed}"
    args = [sys.executable, "-m", "serl.cli.main", "train", task, "--num-demos", str(demos), "--env-steps", str(steps),
            "--run.root", str(root), "--run.name", name, "--run.seed", str(seed), "--no-display", *extra]
    if pixels:
        args.append("--pixels")
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"serl train {task} seed {seed} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return root / task / name


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


def curve(run_dir: Path, grid: np.ndarray) -> np.ndarray:
    """Rolling success rate of training episodes, evaluated at each grid step (last value carried forward)."""
    episodes = episode_log(run_dir)
    if not episodes:
        return np.zeros_like(grid, dtype=float)
    steps = np.array([e["env_steps"] for e in episodes])
    success = np.array([e["episode/success"] for e in episodes], dtype=float)
    rolling = np.array([success[max(0, i - WINDOW + 1): i + 1].mean() for i in range(len(success))])
    index = np.searchsorted(steps, grid, side="right") - 1
    return np.where(index >= 0, rolling[np.clip(index, 0, None)], 0.0)


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

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for ax, (name, result) in zip(axes[0], results.items()):
        grid = np.array(result["grid"])
        for seed_curve in result["curves"]:
            ax.plot(grid, seed_curve, color="tab:blue", alpha=0.3, linewidth=1)
        ax.plot(grid, result["mean_curve"], color="tab:blue", linewidth=2, label="mean over seeds")
        ax.axhline(0.9, color="gray", linestyle="--", linewidth=1)
        if result["target_env_steps"] <= grid[-1]:
            ax.axvline(result["target_env_steps"], color="tab:red", linestyle=":", linewidth=1, label="target")
        ax.set(title=name, xlabel="env steps", ylabel=f"success (rolling {WINDOW} episodes)", ylim=(-0.02, 1.02))
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run: one seed, 2 demos, 300 env steps")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--demos", type=int, default=20)
    parser.add_argument("--steps", type=int, default=0, help="env steps per run (0 = the task's budget)")
    parser.add_argument("--eval-episodes", type=int, default=40, help="deterministic episodes per final checkpoint")
    parser.add_argument("--out", type=Path, default=Path("sample_efficiency"))
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: extra serl train options")
    args = parser.parse_args()
    extra = [a for a in args.train_args if a != "--"]
    if args.quick:
        args.tasks, args.seeds, args.demos, args.steps, args.eval_episodes = ["PandaPickCube"], 1, 2, 300, 2
        extra = ["--agent.hidden-dims", "64", "64", "--agent.num-qs", "2", "--agent.utd-ratio", "1",
                 "--min-online-steps", "100", "--batch-size", "64", *extra]
    args.out.mkdir(parents=True, exist_ok=True)
    results, report = {}, {"benchmark": "sample_efficiency", "quick": args.quick, "seeds": args.seeds,
                           "demos": args.demos, "curve": f"training-episode success, rolling {WINDOW}", "tasks": {}}
    for name in args.tasks:
        task, pixels, budget, target = TASKS[name]
        steps = args.steps or budget
        started = time.monotonic()
        run_dirs = [train_run(task, pixels, steps, seed, args.demos, args.out / "runs", extra) for seed in range(args.seeds)]
        grid = np.linspace(0, steps, 101).astype(int)
        curves = np.stack([curve(run_dir, grid) for run_dir in run_dirs])
        mean_curve = curves.mean(axis=0)
        late = [late_success(run_dir, steps) for run_dir in run_dirs]
        late_known = [rate for rate in late if rate is not None]
        evals = [eval_success(run_dir, args.eval_episodes) for run_dir in run_dirs] if args.eval_episodes else []
        results[name] = {"grid": grid.tolist(), "curves": curves.tolist(), "mean_curve": mean_curve.tolist(),
                         "target_env_steps": target}
        report["tasks"][name] = {
            "env_steps": steps,
            **steps_to(LEVELS, grid, mean_curve),
            "final_success_rate": float(mean_curve[-1]),
            "success_last_2000_steps": float(np.mean(late_known)) if late_known else None,
            "success_last_2000_steps_per_seed": late,
            "eval_success_rate": float(np.mean(evals)) if evals else None,
            "eval_success_rate_per_seed": evals,
            "target_env_steps_to_90pct": target,
            "meets_target": bool(mean_curve[grid <= target].max(initial=0.0) >= 0.9),
            "wall_time_s_per_seed": (time.monotonic() - started) / args.seeds,
        }
    (args.out / "sample_efficiency.json").write_text(json.dumps({"report": report, "curves": results}, indent=1))
    plot(results, args.out / "sample_efficiency.png")
    report["png"] = str(args.out / "sample_efficiency.png")
    report["curves_json"] = str(args.out / "sample_efficiency.json")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
