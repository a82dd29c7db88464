"""``serl classifier label|train|eval``: labelled frames → trained success classifier → held-out report.

- ``label --from-twin PandaPickCube --episodes 30 --out twin.h5``: scripted twin rollouts labelled from ground truth;
- ``label --input rec.h5 --out labels.json --ranges episode_000003:37-50``: mark success ranges of a recording
  (``--interactive`` asks per episode in the terminal, with a contact sheet PNG of its frames);
- ``train --data rec.h5 [--labels labels.json] --out clf/``: train, pick the threshold, write checkpoint + report;
- ``eval --checkpoint clf/ --data other.h5 --out report/``: metrics, plots and the worst mistakes on any labelled data.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Callable, TextIO

import numpy as np

from reward_classifiers.model import EncoderConfig
from reward_classifiers.train import TrainConfig

__all__ = ["ClassifierEvalConfig", "ClassifierTrainConfig", "LabelConfig", "eval", "label", "main", "train"]


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    """Label success frames: twin ground truth, ranges given on the command line, or interactively."""

    out: Path
    """Episode file (HDF5) for --from-twin; labels file (JSON) otherwise."""
    from_twin: str | None = None
    """A twin task (e.g. PandaPickCube): record scripted rollouts labelled from ground truth."""
    episodes: int = 30
    """How many twin episodes to record."""
    live: str | None = None
    """A task to teleoperate now: SPACE toggles success marking, ENTER ends the episode; writes an episode file."""
    teleop: str = "keyboard"
    """Device for --live: keyboard, spacemouse, gamepad (or scripted, on the twin)."""
    robot_url: str | None = None
    """Robot server for --live (default: the twin in-process)."""
    task_module: str | None = None
    """Module or .py file imported first to register your task (as for serl actor)."""
    input: Path | None = None
    """A recorded episode file (serl record-demos / actor recordings) to label."""
    ranges: tuple[str, ...] = ()
    """Success ranges as EPISODE:FIRST-LAST (observation indices, inclusive) or EPISODE:FIRST- (to the end)."""
    interactive: bool = False
    """Ask for each episode's success frames in the terminal (a contact sheet PNG is written beside --out)."""
    from_flags: bool = True
    """Start from the episodes' recorded succeed flags (a key pressed while recording); ranges replace them per episode."""
    image_size: tuple[int, int] = (128, 128)
    cameras: tuple[str, ...] = ("wrist", "front")
    seed: int = 0
    fail_fraction: float = 0.4
    """Share of twin episodes that are near misses (cube lifted too little)."""
    noise: float = 0.1


@dataclasses.dataclass(frozen=True)
class ClassifierTrainConfig:
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
    train: TrainConfig = TrainConfig()
    report: bool = True
    """Write the held-out report (plots, mistakes, summary.json) into OUT/report."""
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class ClassifierEvalConfig:
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


# ----------------------------------------------------------------------------- label


def label(cfg: LabelConfig, *, stdin: TextIO | None = None, stdout: TextIO | None = None) -> dict:
    """Run one labelling mode; returns a summary (also printed as JSON)."""
    stdout = stdout or sys.stdout
    if cfg.from_twin is not None:
        if cfg.input is not None:
            raise ValueError("label: give either --from-twin or --input, not both")
        from reward_classifiers.twin import generate_twin_episodes

        def report(done: int, success: bool, length: int) -> None:
            print(f"[classifier label] episode {done}/{cfg.episodes}: {'success' if success else 'failure'} "
                  f"({length} steps)", file=stdout, flush=True)

        summary = generate_twin_episodes(
            cfg.from_twin, cfg.episodes, cfg.out, seed=cfg.seed, image_size=cfg.image_size, cameras=cfg.cameras,
            fail_fraction=cfg.fail_fraction, noise=cfg.noise, progress=report,
        )
        summary = {"out": str(cfg.out), **summary}
    elif cfg.live is not None:
        summary = {"out": str(cfg.out), **_label_live(cfg, stdout)}
    elif cfg.input is not None:
        summary = _label_recording(cfg, stdin or sys.stdin, stdout)
    else:
        raise ValueError("label: give --from-twin TASK, --live TASK or --input EPISODES.h5")
    print(json.dumps(summary), file=stdout, flush=True)
    return summary


def _label_live(cfg: LabelConfig, stdout: TextIO) -> dict:
    from reward_classifiers.live import record_labelled_episodes
    from serl.devices import make_teleop
    from serl.envs.intervention import InterventionWrapper
    from serl.envs.task_config import CameraSpec
    from serl.envs.tasks import get_task, pixel_variant

    if cfg.task_module:
        from serl.runtime.envs import import_task_module

        import_task_module(cfg.task_module)
    task = get_task(cfg.live)
    if cfg.robot_url is None:
        from serl.envs.tasks import make_sim_env

        env = make_sim_env(cfg.live, pixels=True, seed=cfg.seed, reward="classifier",
                           cameras=tuple(CameraSpec(c, tuple(cfg.image_size)) for c in cfg.cameras))
    else:
        from serl.envs.franka_env import FrankaEnv
        from serl.envs.http_client import HttpRobotClient

        env = FrankaEnv(HttpRobotClient(cfg.robot_url), task if task.cameras else pixel_variant(task))
    teleop = make_teleop(cfg.teleop, env=env, **({"seed": cfg.seed} if cfg.teleop == "scripted" else {}))
    env = InterventionWrapper(env, teleop)
    if cfg.teleop in ("keyboard", "scripted"):
        keys = _NoKeys()  # the keyboard device owns the terminal; its non-motion keys arrive as teleop buttons
    else:
        from serl.devices.keyboard import TerminalKeyReader

        keys = TerminalKeyReader()
    print("[classifier label] SPACE toggles success marking, ENTER ends the episode", file=stdout, flush=True)
    try:
        return record_labelled_episodes(
            env, keys, cfg.out, cfg.episodes, seed=cfg.seed, task=cfg.live,
            period=None if cfg.teleop == "scripted" else 1.0 / task.control_hz,
            report=lambda line: print(f"[classifier label] {line}", file=stdout, flush=True),
        )
    finally:
        keys.close()
        env.close()


class _NoKeys:
    def drain(self) -> list:
        return []

    def close(self) -> None:
        pass


def parse_range(text: str, length: int) -> tuple[int, int]:
    """'a-b', 'a-' or 'a' → inclusive (first, last) inside 0..length-1."""
    first, sep, last = text.strip().partition("-")
    try:
        a = int(first)
        b = (length - 1 if not last.strip() else int(last)) if sep else a
    except ValueError:
        raise ValueError(f"range {text!r}: expected FIRST-LAST, FIRST- or FIRST (integers)") from None
    if not 0 <= a <= b < length:
        raise ValueError(f"range {text!r}: outside 0..{length - 1} (or first > last)")
    return a, b


def _label_recording(cfg: LabelConfig, stdin: TextIO, stdout: TextIO) -> dict:
    from reward_classifiers.data import observation_labels, write_labels
    from serl.data.episodes import read_episodes

    episodes = {e.attrs["name"]: e for e in read_episodes(cfg.input)}
    if not episodes:
        raise ValueError(f"input: {cfg.input} has no episodes")
    labels = {name: observation_labels(e) if cfg.from_flags else np.zeros(len(e) + 1, bool) for name, e in episodes.items()}
    replaced: set[str] = set()
    for item in cfg.ranges:
        name, sep, spec = item.partition(":")
        if not sep or name not in episodes:
            raise ValueError(f"ranges: {item!r} must be EPISODE:FIRST-LAST with EPISODE one of {sorted(episodes)[:5]}…")
        length = len(episodes[name]) + 1
        if name not in replaced:
            labels[name] = np.zeros(length, bool)
            replaced.add(name)
        first, last = parse_range(spec, length)
        labels[name][first:last + 1] = True
    if cfg.interactive:
        sheets = Path(str(cfg.out) + ".frames")
        sheets.mkdir(parents=True, exist_ok=True)
        for name, episode in episodes.items():
            sheet = sheets / f"{name}.png"
            contact_sheet(sheet, episode.observations["images"])
            length = len(episode) + 1
            current = ",".join(f"{a}-{b}" for a, b in _ranges(labels[name])) or "none"
            print(f"{name}: {length} frames, sheet {sheet}; success now: {current}\n"
                  "  success frames (e.g. 37-50, or 37- to the end; several with commas), "
                  "Enter = keep, 'none' = no success, 'q' = stop here: ", end="", file=stdout, flush=True)
            answer = stdin.readline()
            if not answer or answer.strip() == "q":
                break
            answer = answer.strip()
            if not answer:
                continue
            new = np.zeros(length, bool)
            if answer != "none":
                for part in answer.split(","):
                    first, last = parse_range(part, length)
                    new[first:last + 1] = True
            labels[name] = new
    write_labels(cfg.out, cfg.input, labels)
    positives = int(sum(v.sum() for v in labels.values()))
    return {"out": str(cfg.out), "episodes": len(labels), "frames": int(sum(len(v) for v in labels.values())),
            "positives": positives, "episodes_with_success": int(sum(bool(v.any()) for v in labels.values()))}


def _ranges(labels: np.ndarray) -> list[list[int]]:
    from reward_classifiers.data import labels_to_ranges

    return labels_to_ranges(labels)


def contact_sheet(path: Path, images: dict[str, np.ndarray], columns: int = 10) -> None:
    """PNG of every frame of an episode (cameras side by side) with its index, for labelling by eye."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = np.concatenate([images[c] for c in sorted(images)], axis=2)
    n, h, w, _ = frames.shape
    rows = (n + columns - 1) // columns
    gap = 2
    mosaic = np.full((rows * (h + gap), columns * (w + gap), 3), 255, np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, columns)
        mosaic[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = frame
    scale = max(1.0, 96 / h)
    fig = plt.figure(figsize=(mosaic.shape[1] * scale / 80, mosaic.shape[0] * scale / 80), dpi=80)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    for i in range(n):
        r, c = divmod(i, columns)
        ax.text(c * (w + gap) + 1, r * (h + gap) + 1, str(i), color="yellow", fontsize=8, va="top",
                bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ----------------------------------------------------------------------------- train


def parse_crops(items: tuple[str, ...]) -> dict[str, tuple[int, int, int, int]]:
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


def train(cfg: ClassifierTrainConfig, *, log: Callable[[str], None] | None = print) -> dict:
    """Load labelled frames, train, save the checkpoint (and report); returns the held-out summary."""
    from reward_classifiers.checkpoint import save_checkpoint
    from reward_classifiers.data import load_frames
    from reward_classifiers.model import CameraInput, ClassifierSpec
    from reward_classifiers.train import train_classifier

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
        from reward_classifiers.evaluate import write_report

        held = result.heldout_index
        write_report(Path(cfg.out) / "report", result.heldout_probs, frames.labels[held], checkpoint.threshold,
                     images={k: v[held] for k, v in frames.images.items()},
                     sources=[f"{frames.sources[frames.episode[i]]}#{frames.step[i]}" for i in held],
                     extra={"checkpoint": str(cfg.out), "history": result.history})
        summary["report"] = str(Path(cfg.out) / "report")
    if log:
        log(json.dumps(summary))
    return summary


# ----------------------------------------------------------------------------- eval


def evaluate(cfg: ClassifierEvalConfig, *, log: Callable[[str], None] | None = print) -> dict:
    """Metrics and plots of a checkpoint on labelled episode files; returns the report summary."""
    from reward_classifiers.checkpoint import load_checkpoint, save_checkpoint
    from reward_classifiers.data import load_frames
    from reward_classifiers.evaluate import threshold_for_precision, write_report
    from reward_classifiers.train import predict_frames

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
    "label": (LabelConfig, label, "label success frames (twin ground truth, ranges, or interactively)"),
    "train": (ClassifierTrainConfig, train, "train a classifier, choose its threshold, write checkpoint + report"),
    "eval": (ClassifierEvalConfig, evaluate, "held-out metrics, PR curve, confusion matrix, worst mistakes"),
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
    config_cls, function, _ = COMMANDS[argv[0]]
    cfg = tyro.cli(config_cls, args=argv[1:], prog=f"serl classifier {argv[0]}")
    try:
        function(cfg)
    except ValueError as err:
        print(f"serl classifier {argv[0]}: {err}", file=sys.stderr)
        return 2
    return 0
