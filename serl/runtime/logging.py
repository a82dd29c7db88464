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


def write_status(path: Path, status: Mapping) -> None:
    """Atomically replace a small JSON status file (read by ``serl train``'s progress display)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**status, "time": time.time()}, default=_json_default))
    os.replace(tmp, path)


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
