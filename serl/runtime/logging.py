"""Metrics for the runtime: TensorBoard (default) or wandb, a status file for the progress display, a console line."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Literal, Mapping

import numpy as np

LoggerKind = Literal["tensorboard", "wandb", "none"]


class MetricsLogger:
    """Scalar metrics to TensorBoard event files under ``tb_dir`` (or wandb, or nowhere)."""

    def __init__(self, kind: LoggerKind, tb_dir: Path, *, run_name: str = "", config: Mapping | None = None):
        self.kind = kind
        self._writer = None
        self._wandb = None
        if kind == "tensorboard":
            from tensorboardX import SummaryWriter

            tb_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(str(tb_dir), flush_secs=10)
        elif kind == "wandb":
            try:
                import wandb
            except ImportError as err:
                raise ImportError("logger='wandb' needs wandb: pip install 'serl-suite[wandb]'") from err
            self._wandb = wandb.init(project="serl", name=run_name or None, config=dict(config or {}), dir=str(tb_dir))
        elif kind != "none":
            raise ValueError(f"logger: expected 'tensorboard', 'wandb' or 'none', got {kind!r}")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        scalars = {k: float(v) for k, v in metrics.items() if _is_scalar(v)}
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(key, value, step)
        elif self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _is_scalar(value) -> bool:
    try:
        return np.ndim(value) == 0 and np.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def write_status(path: Path, status: Mapping) -> bool:
    """Atomically replace a small JSON status file (read by ``serl train``'s progress display).

    Best effort: on a full or failing disk the old file stays and False comes back (the run goes on; its
    console output says what failed).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({**status, "time": time.time()}, default=_json_default))
        os.replace(tmp, path)
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
        return False


def read_status(path: Path) -> dict:
    """The last status written to ``path``; {} when absent or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def summary_line(prefix: str, metrics: Mapping[str, float]) -> str:
    """One console line: ``prefix k=v k=v``, numbers compactly formatted."""
    parts = []
    for key, value in metrics.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        else:
            parts.append(f"{key}={value}")
    return f"[{prefix}] " + " ".join(parts)


class TrainProgress:
    """``serl train``'s one display for learner and actor, fed by their status files.

    A rich table on a terminal; otherwise a plain line whenever the figures change, and each start-up
    phase (waiting for weights, compiling) once.
    """

    COLUMNS = ("env steps", "episodes", "success (last 20)", "return", "updates", "updates/s", "weights",
               "online buffer", "demo buffer", "critic loss", "temperature")

    def __init__(self, run_dir: Path, total_steps: int, live: bool, pixels: bool = False,
                 console_token: str | None = None):
        self.run_dir = run_dir
        self.console_token = console_token
        self.console_said = False
        self.total = total_steps
        self.pixels = pixels
        self.live = None
        self.started = time.monotonic()
        self.last_line = ""
        self.last_print = 0.0
        self.last_phase = ""
        self.cpu_said = self.rate_said = False
        if live:
            from rich.live import Live

            self.live = Live(self._render({}, {}), refresh_per_second=2, transient=False)
            self.live.start()

    def figures(self, learner: dict, actor: dict) -> tuple[str, ...]:
        """The row of the table, one string per column."""
        def loss(key: str) -> str:
            return f"{learner[key]:.4g}" if key in learner else "-"

        return (
            f"{actor.get('env_steps', 0)}/{self.total}", str(actor.get("episodes", 0)),
            f"{actor.get('success_rate', 0.0):.0%}", f"{actor.get('return', 0.0):.2f}", str(learner.get("updates", 0)),
            f"{learner['updates_per_s']:.2f}" if "updates_per_s" in learner else "-", str(actor.get("weights_version", -1)),
            str(learner.get("online_size", 0)), str(learner.get("demo_size", 0)), loss("critic_loss"), loss("temperature"),
        )

    def phase(self, learner: dict, actor: dict) -> str:
        """What the processes are busy with while nothing moves yet ("" once both are running)."""
        parts = []
        if not learner:
            parts.append("learner: starting")
        elif learner.get("phase"):
            parts.append(f"learner: {learner['phase']}")
        if not actor:
            parts.append("actor: starting")
        elif actor.get("phase"):
            parts.append(f"actor: {actor['phase']}")
        return "; ".join(parts)

    def _render(self, learner: dict, actor: dict):
        from rich.table import Table

        phase = self.phase(learner, actor)
        caption = f"{phase}… ({time.monotonic() - self.started:.0f} s)" if phase else None
        table = Table(title=f"serl train — {self.run_dir}", show_header=True, caption=caption)
        for column in self.COLUMNS:
            table.add_column(column, justify="right")
        table.add_row(*self.figures(learner, actor))
        return table

    def update(self) -> None:
        learner = read_status(self.run_dir / "status" / "learner.json")
        actor = read_status(self.run_dir / "status" / "actor.json")
        self._say_console(actor)
        self._say_cpu_rate(learner, actor)
        if self.live is not None:
            self.live.update(self._render(learner, actor))
            return
        phase = self.phase(learner, actor)
        if phase and phase != self.last_phase:
            note = "" if self.last_phase else "; compiled code is cached for later runs"
            print(f"[train] {phase}… ({time.monotonic() - self.started:.0f} s{note})", flush=True)
        self.last_phase = phase or self.last_phase
        self._plain_line(learner, actor, force=False)

    def _plain_line(self, learner: dict, actor: dict, force: bool) -> None:
        """The figures as one line, when they changed (at most every 5 s unless ``force``)."""
        line = "[train] " + " ".join(f"{name.replace(' ', '_')}={value}"
                                     for name, value in zip(self.COLUMNS, self.figures(learner, actor)))
        if self.phase(learner, actor) or line == self.last_line:
            return
        if force or time.monotonic() - self.last_print > 5.0:
            self.last_print = time.monotonic()
            self.last_line = line
            print(line, flush=True)

    def _say_console(self, actor: dict) -> None:
        """Once: the actor's console address, on a line of its own (the actor's own output goes to its log)."""
        if self.console_said or not actor.get("console"):
            return
        self.console_said = True
        token = f"?token={self.console_token}" if self.console_token else ""
        self._say(f"console: {actor['console']}{token}")

    def _say_cpu_rate(self, learner: dict, actor: dict) -> None:
        """Once: what a pixel run's measured update rate on the CPU means for wall time."""
        rate = learner.get("updates_per_s", 0.0)
        if self.rate_said or not self.pixels or learner.get("backend") != "cpu":
            return
        if not self.cpu_said:
            self.cpu_said = True
            self._say("[train] pixels on the CPU (no GPU found by JAX): expect well under one update per second; "
                      "the measured rate and the wall time it means follow after the first updates")
        if rate <= 0:
            return
        self.rate_said = True
        left = max(self.total - actor.get("env_steps", 0), 0)
        hours = left / rate / 3600.0  # one update per env step
        message = (f"[train] pixels on the CPU: {rate:.2f} updates/s, one update per env step: the {left} env steps "
                   f"left take about {hours:.1f} h. A GPU (pip install 'jax[cuda12]') is usually 50-100× faster.")
        self._say(message)

    def _say(self, message: str) -> None:
        if self.live is not None:
            self.live.console.print(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        """Stop the live table; plain output ends with the last figures."""
        if self.live is not None:
            self.live.stop()
            return
        learner = read_status(self.run_dir / "status" / "learner.json")
        self._plain_line(learner, read_status(self.run_dir / "status" / "actor.json"), force=True)
