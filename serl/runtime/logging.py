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
    """``serl train``'s one display for the learner and its actors, fed by their status files.

    A rich table on a terminal; otherwise a plain line whenever the figures change, and each start-up
    phase (waiting for weights, compiling) once. With several actors (every ``status/actor*.json``) the figures
    are totals (success and return: the mean over the actors that finished an episode), with a row per actor in
    the table and the env steps per actor on the plain line.
    """

    COLUMNS = ("env steps", "episodes", "success (last 20)", "return", "updates", "updates/s", "weights",
               "online buffer", "demo buffer", "critic loss", "temperature")

    def __init__(self, run_dir: Path, total_steps: int, live: bool, pixels: bool = False,
                 console_token: str | None = None, actors: int = 1):
        self.run_dir = run_dir
        self.console_token = console_token
        self.console_said = False
        self.total = total_steps
        self.pixels = pixels
        self.actors = actors
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

    def actor_statuses(self) -> dict[str, dict]:
        """Per actor id ("" for ``actor.json``), its last status, in id order (numbers by value)."""
        statuses = {}
        for path in (self.run_dir / "status").glob("actor*.json"):
            stem = path.name[:-len(".json")]
            if stem == "actor" or stem.startswith("actor-"):
                statuses[stem[len("actor-"):]] = read_status(path)
        return dict(sorted(statuses.items(), key=lambda item: (not item[0].isdigit(), int(item[0]) if
                                                               item[0].isdigit() else 0, item[0])))

    @staticmethod
    def combined(statuses: dict[str, dict]) -> dict:
        """The actors' figures as one: steps and episodes summed, success and return averaged over the actors
        that finished an episode, the newest weights; {} before any status."""
        reported = [s for s in statuses.values() if s]
        if len(reported) <= 1:
            return reported[0] if reported else {}
        finished = [s for s in reported if s.get("episodes", 0)]
        out = {"env_steps": sum(s.get("env_steps", 0) for s in reported),
               "episodes": sum(s.get("episodes", 0) for s in reported),
               "weights_version": max(s.get("weights_version", -1) for s in reported)}
        for key in ("success_rate", "return"):
            values = [s[key] for s in finished if key in s]
            if values:
                out[key] = float(np.mean(values))
        return out

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

    def actor_figures(self, actor: dict) -> tuple[str, ...]:
        """One actor's row: its own figures, the learner's columns left empty."""
        row = self.figures({}, actor)
        return (str(actor.get("env_steps", 0)), *row[1:4], "", "", row[6], "", "", "", "")

    def phase(self, learner: dict, actors: dict[str, dict]) -> str:
        """What the processes are busy with while nothing moves yet ("" once all are running); ``actors``: per
        actor id, its status."""
        parts = []
        if not learner:
            parts.append("learner: starting")
        elif learner.get("phase"):
            parts.append(f"learner: {learner['phase']}")
        if self.actors == 1:
            actor = next(iter(actors.values()), {})
            if not actor:
                parts.append("actor: starting")
            elif actor.get("phase"):
                parts.append(f"actor: {actor['phase']}")
            return "; ".join(parts)
        waiting: dict[str, list[str]] = {}
        for actor_id, status in actors.items():
            if not status or status.get("phase"):
                waiting.setdefault(status.get("phase", "starting"), []).append(actor_id or "actor")
        for phase, ids in waiting.items():
            parts.append(f"actor{'s' if len(ids) > 1 else ''} {', '.join(ids)}: {phase}")
        missing = self.actors - len(actors)
        if missing > 0:
            more = " more" if actors else ""
            parts.append(f"{missing}{more} actor{'s' if missing > 1 else ''}: starting")
        return "; ".join(parts)

    def _render(self, learner: dict, actors: dict[str, dict]):
        from rich.table import Table

        phase = self.phase(learner, actors)
        caption = f"{phase}… ({time.monotonic() - self.started:.0f} s)" if phase else None
        table = Table(title=f"serl train — {self.run_dir}", show_header=True, caption=caption)
        several = self.actors > 1 or len(actors) > 1
        if several:
            table.add_column("actor")
        for column in self.COLUMNS:
            table.add_column(column, justify="right")
        if not several:
            table.add_row(*self.figures(learner, self.combined(actors)))
            return table
        table.add_row("all", *self.figures(learner, self.combined(actors)))
        for actor_id, status in actors.items():
            table.add_row(actor_id or "actor", *self.actor_figures(status))
        return table

    def update(self) -> None:
        learner = read_status(self.run_dir / "status" / "learner.json")
        actors = self.actor_statuses()
        total = self.combined(actors)
        self._say_console(actors)
        self._say_cpu_rate(learner, total)
        if self.live is not None:
            self.live.update(self._render(learner, actors))
            return
        phase = self.phase(learner, actors)
        if phase and phase != self.last_phase:
            note = "" if self.last_phase else "; compiled code is cached for later runs"
            print(f"[train] {phase}… ({time.monotonic() - self.started:.0f} s{note})", flush=True)
        self.last_phase = phase or self.last_phase
        self._plain_line(learner, actors, force=False)

    def _plain_line(self, learner: dict, actors: dict[str, dict], force: bool) -> None:
        """The figures as one line, when they changed (at most every 5 s unless ``force``)."""
        line = "[train] " + " ".join(f"{name.replace(' ', '_')}={value}"
                                     for name, value in zip(self.COLUMNS, self.figures(learner, self.combined(actors))))
        if len(actors) > 1:
            line += " per_actor=" + ",".join(f"{actor_id or 'actor'}:{status.get('env_steps', 0)}"
                                             for actor_id, status in actors.items())
        if self.phase(learner, actors) or line == self.last_line:
            return
        if force or time.monotonic() - self.last_print > 5.0:
            self.last_print = time.monotonic()
            self.last_line = line
            print(line, flush=True)

    def _say_console(self, actors: dict[str, dict]) -> None:
        """Once: the console's address, on a line of its own (the actors' own output goes to their logs)."""
        url = next((status["console"] for status in actors.values() if status.get("console")), None)
        if self.console_said or not url:
            return
        self.console_said = True
        token = f"?token={self.console_token}" if self.console_token else ""
        self.say(f"console: {url}{token}")

    def _say_cpu_rate(self, learner: dict, actor: dict) -> None:
        """Once: what a pixel run's measured update rate on the CPU means for wall time."""
        rate = learner.get("updates_per_s", 0.0)
        if self.rate_said or not self.pixels or learner.get("backend") != "cpu":
            return
        if not self.cpu_said:
            self.cpu_said = True
            self.say("[train] pixels on the CPU (no GPU found by JAX): expect well under one update per second; "
                     "the measured rate and the wall time it means follow after the first updates")
        if rate <= 0:
            return
        self.rate_said = True
        left = max(self.total - actor.get("env_steps", 0), 0)
        hours = left / rate / 3600.0  # one update per env step
        message = (f"[train] pixels on the CPU: {rate:.2f} updates/s, one update per env step: the {left} env steps "
                   f"left take about {hours:.1f} h. A GPU (pip install 'jax[cuda12]') is usually 50-100× faster.")
        self.say(message)

    def say(self, message: str) -> None:
        """A line of its own, above the live table or between the plain lines."""
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
        self._plain_line(learner, self.actor_statuses(), force=True)
