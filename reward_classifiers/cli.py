"""``serl classifier label|train|eval``: labelled frames → trained success classifier → held-out report.

- ``label ...``: see ``reward_classifiers.labelling``;
- ``train --data rec.h5 [--labels labels.json] --out clf/``: train, pick the threshold, write checkpoint + report;
- ``eval --checkpoint clf/ --data other.h5 --out report/``: metrics, plots and the worst mistakes on any labelled data.

``serl`` dispatches ``serl classifier`` here; ``python -m reward_classifiers.cli`` runs the same commands.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from reward_classifiers.checkpoint import load_checkpoint, save_checkpoint
from reward_classifiers.data import load_frames
from reward_classifiers.evaluate import threshold_for_precision, write_report
from reward_classifiers.labelling import ClassifierLabelCommand, label
from reward_classifiers.model import CameraInput, ClassifierSpec, EncoderConfig
from reward_classifiers.train import ClassifierTrainingParams, predict_frames, train_classifier

__all__ = [
    "ClassifierEvalCommand", "ClassifierLabelCommand", "ClassifierTrainCommand", "eval", "evaluate", "label", "main",
    "parse_crops", "train",
]


@dataclasses.dataclass(frozen=True)
class ClassifierTrainCommand:
    """Train a success classifier on labelled episode files."""

    data: tuple[Path, ...]
    """Episode files (HDF5)."""
    out: Path
    """Checkpoint directory (classifier.json + params.msgpack, report/ inside)."""
    labels: tuple[Path, ...] = ()
    """Labels files from `serl classifier label` (one per data file); default: the episodes' succeed flags."""
    cameras: tuple[str, ...] = ()
    """Cameras to use (default: every camera in the data)."""
    crops: tuple[str, ...] = ()
    """Per-camera crop inside the env frame, CAMERA=TOP,LEFT,HEIGHT,WIDTH."""
    input_size: tuple[int, int] | None = None
    """Resize every (cropped) camera image to this size before the encoder."""
    exclude_before_success: int = 3
    """Drop this many frames before the first success of each episode (ambiguous)."""
    frame_stride: int = 1
    """Keep every n-th negative frame (positives are always kept)."""
    encoder: EncoderConfig = EncoderConfig()
    train: ClassifierTrainingParams = ClassifierTrainingParams()
    report: bool = True
    """Write the held-out report (plots, mistakes, summary.json) into OUT/report."""
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class ClassifierEvalCommand:
    """Evaluate a checkpoint on labelled episodes: metrics, PR curve, confusion matrix, worst mistakes."""

    checkpoint: Path
    data: tuple[Path, ...]
    labels: tuple[Path, ...] = ()
    out: Path | None = None
    """Report directory (default CHECKPOINT/eval)."""
    exclude_before_success: int = 3
    heldout_only: bool = True
    """Skip the episodes the checkpoint was trained on (keep only its held-out ones and unseen ones)."""
    target_precision: float | None = None
    """Choose a new threshold for this precision on this data (reported; saved with --save-threshold)."""
    save_threshold: bool = False


def parse_crops(items: tuple[str, ...]) -> dict[str, tuple[int, int, int, int]]:
    """``CAMERA=TOP,LEFT,HEIGHT,WIDTH`` items → {camera: crop}."""
    crops = {}
    for item in items:
        name, sep, values = item.partition("=")
        try:
            crop = tuple(int(v) for v in values.split(","))
        except ValueError:
            crop = ()
        if not sep or len(crop) != 4:
            raise ValueError(f"crops: {item!r} must be CAMERA=TOP,LEFT,HEIGHT,WIDTH")
        crops[name.strip()] = crop
    return crops


def train(cfg: ClassifierTrainCommand, *, log: Callable[[str], None] | None = print) -> dict:
    """Load labelled frames, train, save the checkpoint (and report); returns the held-out summary."""
    frames = load_frames(cfg.data, cameras=cfg.cameras or None, labels_files=cfg.labels,
                         exclude_before_success=cfg.exclude_before_success, frame_stride=cfg.frame_stride)
    crops = parse_crops(cfg.crops)
    unknown = sorted(set(crops) - set(frames.cameras))
    if unknown:
        raise ValueError(f"crops: camera(s) {unknown} not in the data {list(frames.cameras)}")
    spec = ClassifierSpec(
        tuple(CameraInput(c, frames.image_size(c), crops.get(c), cfg.input_size) for c in frames.cameras), cfg.encoder
    )
    if log:
        log(f"[classifier train] data: {json.dumps(frames.summary())}")
    bar = cfg.progress and sys.stdout.isatty()  # a progress bar on a terminal, log lines elsewhere
    result = train_classifier(frames, spec, cfg.train, progress=bar, log=None if bar else log)
    metadata = {**result.checkpoint.metadata, "data_files": [str(p) for p in cfg.data], "history": result.history}
    checkpoint = dataclasses.replace(result.checkpoint, metadata=metadata)
    save_checkpoint(cfg.out, checkpoint)
    summary = {"checkpoint": str(cfg.out), "threshold": checkpoint.threshold,
               "heldout": checkpoint.metadata["heldout_metrics"],
               "target_precision_reached": checkpoint.metadata["target_precision_reached"],
               "best_step": checkpoint.metadata["best_step"], "steps_run": checkpoint.metadata["steps_run"]}
    if cfg.report:
        held = result.heldout_index
        write_report(Path(cfg.out) / "report", result.heldout_probs, frames.labels[held], checkpoint.threshold,
                     images={k: v[held] for k, v in frames.images.items()},
                     sources=[f"{frames.sources[frames.episode[i]]}#{frames.step[i]}" for i in held],
                     extra={"checkpoint": str(cfg.out), "history": result.history})
        summary["report"] = str(Path(cfg.out) / "report")
    if log:
        log(json.dumps(summary))
    return summary


def evaluate(cfg: ClassifierEvalCommand, *, log: Callable[[str], None] | None = print) -> dict:
    """Metrics and plots of a checkpoint on labelled episode files; returns the report summary."""
    checkpoint = load_checkpoint(cfg.checkpoint)
    frames = load_frames(cfg.data, cameras=checkpoint.spec.camera_names, labels_files=cfg.labels,
                         exclude_before_success=cfg.exclude_before_success)
    if cfg.heldout_only:
        trained = set(checkpoint.metadata.get("train_episodes", []))
        keep = np.array([frames.sources[e] not in trained for e in frames.episode])
        if not keep.any():
            raise ValueError("eval: every episode was used for training; pass --no-heldout-only or other data")
        frames = frames.subset(np.flatnonzero(keep))
    probs = predict_frames(checkpoint.spec, checkpoint.params, frames.images)
    threshold = checkpoint.threshold
    extra: dict = {"checkpoint": str(cfg.checkpoint), "checkpoint_threshold": threshold, "data": frames.summary()}
    if cfg.target_precision is not None:
        threshold, reached = threshold_for_precision(probs, frames.labels, cfg.target_precision)
        extra.update(target_precision=cfg.target_precision, target_precision_reached=reached)
        if cfg.save_threshold:
            save_checkpoint(cfg.checkpoint, dataclasses.replace(checkpoint, threshold=threshold))
    out = cfg.out or Path(cfg.checkpoint) / "eval"
    summary = write_report(out, probs, frames.labels, threshold, images=frames.images,
                           sources=[f"{frames.sources[frames.episode[i]]}#{frames.step[i]}" for i in range(len(frames))],
                           extra=extra)
    if log:
        log(json.dumps({"report": str(out), "threshold": threshold, **{k: summary["metrics"][k] for k in
                        ("accuracy", "precision", "recall", "f1", "roc_auc", "n", "positives")}}))
    return summary


eval = evaluate  # noqa: A001 - the subcommand's name

COMMANDS = {
    "label": (ClassifierLabelCommand, label, "label success frames (twin ground truth, ranges, or interactively)"),
    "train": (ClassifierTrainCommand, train, "train a classifier, choose its threshold, write checkpoint + report"),
    "eval": (ClassifierEvalCommand, evaluate, "held-out metrics, PR curve, confusion matrix, worst mistakes"),
}


def main(argv: list[str] | None = None) -> int:
    """``serl classifier <label|train|eval> [options]``."""
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help") or argv[0] not in COMMANDS:
        lines = ["usage: serl classifier <command> [options]", "", "commands:"]
        lines += [f"  {name.ljust(6)}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
        stream = sys.stdout if not argv or argv[0] in ("-h", "--help", "help") else sys.stderr
        if stream is sys.stderr:
            print(f"serl classifier: unknown command {argv[0]!r}", file=stream)
        print("\n".join(lines), file=stream)
        return 0 if stream is sys.stdout else 2
    command_cls, function, _ = COMMANDS[argv[0]]
    cfg = tyro.cli(command_cls, args=argv[1:], prog=f"serl classifier {argv[0]}")
    try:
        function(cfg)
    except ValueError as err:
        print(f"serl classifier {argv[0]}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
