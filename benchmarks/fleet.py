"""One actor against two on one learner: ``serl train PandaPickCube --actors N`` at the same total env-step budget.

Per configuration: wall time of the whole ``serl train`` (demos, start-up and compilation included), env steps
per second over it and, summed over the actors, between each one's first and last episode end (steady), and the
success rate of all training episodes that ended in the last 1,000 env steps (counted over all actors, from
``episodes.jsonl``); then the ratios two actors / one. Prints one JSON object; ``--out`` keeps the runs.
``--quick`` is a smoke run for CI (160 env steps, short episodes, no demos, a learner that only stores: the
figures are the plumbing's, not learning's).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serl.console.curves import episode_records

TASK = "PandaPickCube"
LATE_WINDOW = 1000


def train_run(actors: int, steps: int, demos: int, seed: int, root: Path, extra: list[str]) -> tuple[Path, float]:
    """``serl train`` with ``actors`` actors; its run directory and wall time."""
    name = f"actors{actors}-seed{seed}"
    args = [sys.executable, "-m", "serl.cli.main", "train", TASK, "--actors", str(actors), "--env-steps", str(steps),
            "--num-demos", str(demos), "--run.root", str(root), "--run.name", name, "--run.seed", str(seed),
            "--no-display", "--console.no-enabled", *extra]
    started = time.monotonic()
    result = subprocess.run(args, capture_output=True, text=True)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"serl train --actors {actors} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return root / TASK / name, wall


def figures(run_dir: Path, steps: int, wall: float) -> dict:
    episodes = episode_records(run_dir)
    late = [e["success"] for e in episodes if e["env_steps"] > steps - LATE_WINDOW]
    return {
        "wall_time_s": round(wall, 1),
        "env_steps_per_s": round(steps / wall, 2),
        "env_steps_per_s_steady": None if (steady := steady_rate(episodes)) is None else round(steady, 2),
        "episodes": len(episodes),
        "episodes_per_actor": {actor or "actor": sum(e["actor"] == actor for e in episodes)
                               for actor in sorted({e["actor"] for e in episodes})},
        f"success_last_{LATE_WINDOW}_steps": sum(late) / len(late) if late else None,
    }


def steady_rate(episodes: list[dict]) -> float | None:
    """Env steps per second summed over the actors, each between its first and its last episode's end (None
    unless every actor finished two episodes)."""
    rates = []
    for actor in {e["actor"] for e in episodes}:
        own = [e for e in episodes if e["actor"] == actor and e["time"] is not None]
        if len(own) < 2 or own[-1]["time"] <= own[0]["time"]:
            return None
        steps = [e.get("actor_env_steps", e["env_steps"]) for e in (own[0], own[-1])]
        rates.append((steps[1] - steps[0]) / (own[-1]["time"] - own[0]["time"]))
    return sum(rates) if rates else None


def ratio(two: float | None, one: float | None) -> float | None:
    return None if two is None or not one else round(two / one, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run: 160 env steps, no demos, no updates")
    parser.add_argument("--steps", type=int, default=6000, help="total env steps of each run (over all its actors)")
    parser.add_argument("--demos", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: extra serl train options")
    args = parser.parse_args()
    extra = [a for a in args.train_args if a != "--"]
    if args.quick:
        args.steps, args.demos = 160, 0
        extra = ["--agent.hidden-dims", "32", "32", "--agent.num-qs", "2", "--min-online-steps", "1000000",
                 "--run.logger", "none", "--overrides", "max_episode_steps=40", *extra]
    with tempfile.TemporaryDirectory(prefix="serl-fleet-") as scratch:
        root = (args.out or Path(scratch)) / "runs"
        results = {}
        for actors in (1, 2):
            run_dir, wall = train_run(actors, args.steps, args.demos, args.seed, root, extra)
            results[f"actors_{actors}"] = figures(run_dir, args.steps, wall)
    one, two = results["actors_1"], results["actors_2"]
    late = f"success_last_{LATE_WINDOW}_steps"
    print(json.dumps({
        "benchmark": "fleet", "task": TASK, "quick": args.quick, "env_steps": args.steps, "demos": args.demos,
        "seed": args.seed, **results,
        "ratio_2_over_1": {key: ratio(two[key], one[key])
                           for key in ("wall_time_s", "env_steps_per_s", "env_steps_per_s_steady", late)},
    }))


if __name__ == "__main__":
    main()
