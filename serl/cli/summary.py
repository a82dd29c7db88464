"""``serl summary RUN_DIR``: the run's learning curves as ``RUN_DIR/summary.png``."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated

import tyro

from serl.console.curves import WINDOW, is_run_dir, read_curves, write_summary_png


@dataclasses.dataclass(frozen=True)
class SummaryConfig:
    """Plot a run's success rate, return, episode length and intervention rate against env steps (with several
    actors: the total and a thin curve per actor)."""

    run_dir: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
    """The run's folder, e.g. runs/PandaPickCube/<run name>."""


def summary(cfg: SummaryConfig) -> int:
    if not cfg.run_dir.is_dir() or not is_run_dir(cfg.run_dir):
        raise FileNotFoundError(f"{cfg.run_dir} is not a run folder (it has neither episodes.jsonl nor config.json)")
    path = write_summary_png(cfg.run_dir)
    if path is None:
        print(f"serl summary: {cfg.run_dir} has no episodes yet; nothing to plot", file=sys.stderr)
        return 1
    curves = read_curves(cfg.run_dir, max_points=1)
    last, actors = curves["last"], curves.get("actors", {})
    over = f" of {len(actors)} actors ({', '.join(actors)})" if actors else ""
    print(f"wrote {path} (success {last['success_rate']:.0%} over the last {WINDOW} episodes{over} at env step "
          f"{last['env_steps']:.0f})")
    return 0
