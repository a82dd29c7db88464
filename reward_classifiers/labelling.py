"""``serl classifier label``: success labels from twin ground truth, live teleop, ranges, or by eye.

- ``--from-twin PandaPickCube --episodes 30 --out twin.h5``: scripted twin rollouts labelled from ground truth;
- ``--live TASK --out live.h5``: teleoperate while a key toggles success marking;
- ``--input rec.h5 --out labels.json --ranges episode_000003:37-50``: mark success ranges of a recording
  (``--interactive`` asks per episode in the terminal, with a contact sheet PNG of its frames).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import TextIO

import numpy as np

from reward_classifiers.data import labels_to_ranges, observation_labels, write_labels
from reward_classifiers.live import record_labelled_episodes
from reward_classifiers.twin import generate_twin_episodes
from serl.data.episodes import read_episodes
from serl.devices import make_teleop
from serl.devices.keyboard import TerminalKeyReader
from serl.envs.franka_env import FrankaEnv
from serl.envs.http_client import HttpRobotClient
from serl.envs.intervention import InterventionWrapper
from serl.envs.task_config import CameraSpec
from serl.envs.tasks import get_task, make_sim_env, pixel_variant

__all__ = ["ClassifierLabelCommand", "contact_sheet", "label", "parse_range"]


@dataclasses.dataclass(frozen=True)
class ClassifierLabelCommand:
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


def label(cfg: ClassifierLabelCommand, *, stdin: TextIO | None = None, stdout: TextIO | None = None) -> dict:
    """Run one labelling mode; returns a summary (also printed as JSON)."""
    stdout = stdout or sys.stdout
    if cfg.from_twin is not None:
        if cfg.input is not None:
            raise ValueError("label: give either --from-twin or --input, not both")

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


def _label_live(cfg: ClassifierLabelCommand, stdout: TextIO) -> dict:
    if cfg.task_module:
        from serl.runtime.envs import import_task_module  # only a user task module needs the env builder

        import_task_module(cfg.task_module)
    task = get_task(cfg.live)
    if cfg.robot_url is None:
        env = make_sim_env(cfg.live, pixels=True, seed=cfg.seed, reward="classifier",
                           cameras=tuple(CameraSpec(c, tuple(cfg.image_size)) for c in cfg.cameras))
    else:
        env = FrankaEnv(HttpRobotClient(cfg.robot_url), task if task.cameras else pixel_variant(task))
    teleop = make_teleop(cfg.teleop, env=env, **({"seed": cfg.seed} if cfg.teleop == "scripted" else {}))
    env = InterventionWrapper(env, teleop)
    if cfg.teleop in ("keyboard", "scripted"):
        keys = _NoKeys()  # the keyboard device owns the terminal; its non-motion keys arrive as teleop buttons
    else:
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
    """A key source that never reports a key."""

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


def _label_recording(cfg: ClassifierLabelCommand, stdin: TextIO, stdout: TextIO) -> dict:
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
        _ask_labels(episodes, labels, Path(str(cfg.out) + ".frames"), stdin, stdout)
    write_labels(cfg.out, cfg.input, labels)
    positives = int(sum(v.sum() for v in labels.values()))
    return {"out": str(cfg.out), "episodes": len(labels), "frames": int(sum(len(v) for v in labels.values())),
            "positives": positives, "episodes_with_success": int(sum(bool(v.any()) for v in labels.values()))}


def _ask_labels(episodes: dict, labels: dict[str, np.ndarray], sheets: Path, stdin: TextIO, stdout: TextIO) -> None:
    """Ask per episode for its success frames (updating ``labels``), showing a contact sheet of its frames."""
    sheets.mkdir(parents=True, exist_ok=True)
    for name, episode in episodes.items():
        sheet = sheets / f"{name}.png"
        contact_sheet(sheet, episode.observations["images"])
        length = len(episode) + 1
        current = ",".join(f"{a}-{b}" for a, b in labels_to_ranges(labels[name])) or "none"
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


def contact_sheet(path: Path, images: dict[str, np.ndarray], columns: int = 10) -> None:
    """PNG of every frame of an episode (cameras side by side) with its index, for labelling by eye."""
    import matplotlib  # only the interactive mode draws; the other modes run without a plotting stack

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
