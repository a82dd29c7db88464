"""Labelled frames for the success classifier.

Sources:
- recorded episode files (HDF5, serl/data/episodes/): observation ``t+1`` takes the label of step
  ``t``'s ``succeed`` flag (the reset observation is a negative), or labels from a labels file written by
  ``serl classifier label`` (JSON ``{"episodes": {name: [[first, last], ...]}}``, observation indices, inclusive);
- the twin: scripted (noisy) rollouts labelled from ground truth (``generate_twin_episodes``).

Frames just before the first success of a successful episode look like success but are not; they can be
dropped with ``exclude_before_success``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from serl.data.episodes import Episode, read_episodes

LABELS_FORMAT = "serl-classifier-labels"


@dataclasses.dataclass
class LabelledFrames:
    """Frames of several cameras with a success label each; ``episode``/``step`` say where each came from."""

    images: dict[str, np.ndarray]  # camera -> (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) bool
    episode: np.ndarray  # (N,) int, index into ``sources``
    step: np.ndarray  # (N,) int, observation index inside its episode
    sources: list[str] = dataclasses.field(default_factory=list)  # "<file>:<episode name>"

    def __post_init__(self):
        n = len(self.labels)
        for name, frames in self.images.items():
            if frames.shape[0] != n or frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
                raise ValueError(f"images[{name!r}]: expected ({n}, H, W, 3) uint8, got {frames.dtype} {frames.shape}")
        if len(self.episode) != n or len(self.step) != n:
            raise ValueError("labels, episode and step must have the same length")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(self.images)

    def image_size(self, camera: str) -> tuple[int, int]:
        return tuple(self.images[camera].shape[1:3])

    def subset(self, index: np.ndarray) -> "LabelledFrames":
        return LabelledFrames(
            {k: v[index] for k, v in self.images.items()}, self.labels[index], self.episode[index], self.step[index],
            list(self.sources),
        )

    def summary(self) -> dict:
        return {"frames": len(self), "positives": int(self.labels.sum()), "negatives": int((~self.labels).sum()),
                "episodes": int(len(np.unique(self.episode))), "cameras": {c: list(self.image_size(c)) for c in self.cameras}}

    @staticmethod
    def concatenate(parts: Sequence["LabelledFrames"]) -> "LabelledFrames":
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("no labelled frames (empty files, or every frame excluded)")
        cameras = parts[0].cameras
        for part in parts[1:]:
            if part.cameras != cameras:
                raise ValueError(f"cameras differ between sources: {list(cameras)} vs {list(part.cameras)}")
            for cam in cameras:
                if part.image_size(cam) != parts[0].image_size(cam):
                    raise ValueError(f"camera {cam!r}: image sizes differ between sources")
        offsets = np.cumsum([0] + [len(p.sources) for p in parts[:-1]])
        return LabelledFrames(
            {c: np.concatenate([p.images[c] for p in parts]) for c in cameras},
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.episode + off for p, off in zip(parts, offsets)]),
            np.concatenate([p.step for p in parts]),
            [s for p in parts for s in p.sources],
        )


def observation_labels(episode: Episode) -> np.ndarray:
    """(T+1,) success label per observation from the per-step ``succeed`` flags."""
    return np.concatenate([[False], np.asarray(episode.succeed, bool)])


def ranges_to_labels(length: int, ranges: Iterable[Sequence[int]], where: str = "labels") -> np.ndarray:
    """Inclusive observation-index ranges → (length,) bool; ValueError for ranges outside the episode."""
    labels = np.zeros(length, bool)
    for item in ranges:
        if len(item) != 2 or int(item[0]) > int(item[1]) or int(item[0]) < 0 or int(item[1]) >= length:
            raise ValueError(f"{where}: range {list(item)} is not [first, last] inside 0..{length - 1}")
        labels[int(item[0]):int(item[1]) + 1] = True
    return labels


def labels_to_ranges(labels: np.ndarray) -> list[list[int]]:
    """(N,) bool → inclusive [first, last] runs of True."""
    padded = np.concatenate([[False], np.asarray(labels, bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [[int(a), int(b) - 1] for a, b in zip(edges[::2], edges[1::2])]


def write_labels(path: str | os.PathLike, episodes_file: str | os.PathLike, labels: Mapping[str, np.ndarray]) -> None:
    """Labels file (JSON, human-editable): success ranges per episode of ``episodes_file``."""
    payload = {
        "format": LABELS_FORMAT,
        "episodes_file": os.fspath(episodes_file),
        "episodes": {name: labels_to_ranges(value) for name, value in labels.items()},
        "lengths": {name: int(len(value)) for name, value in labels.items()},
    }
    Path(path).write_text(json.dumps(payload, indent=1))


def read_labels(path: str | os.PathLike) -> dict:
    """The labels file as ``{"episodes": {name: ranges}, "lengths": {...}, "episodes_file": ...}``."""
    try:
        payload = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"labels file not found: {path}") from None
    except ValueError as err:
        raise ValueError(f"labels file {path}: not valid JSON ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != LABELS_FORMAT or not isinstance(payload.get("episodes"), dict):
        raise ValueError(f"labels file {path}: not a '{LABELS_FORMAT}' file")
    return payload


def frames_from_episodes(
    path: str | os.PathLike,
    *,
    cameras: Sequence[str] | None = None,
    labels_file: str | os.PathLike | None = None,
    exclude_before_success: int = 0,
    frame_stride: int = 1,
) -> LabelledFrames:
    """Every (or every ``frame_stride``-th) observation of every episode, labelled by its ``succeed`` flags or a labels file.

    With ``exclude_before_success=n`` the ``n`` frames before the first positive of each episode are dropped
    (negatives that look like success); positives are always kept.
    """
    if exclude_before_success < 0 or frame_stride < 1:
        raise ValueError("exclude_before_success must be >= 0 and frame_stride >= 1")
    label_data = read_labels(labels_file) if labels_file is not None else None
    images: dict[str, list] = {}
    labels, episode_ids, steps, sources = [], [], [], []
    for episode in read_episodes(path):
        name = episode.attrs["name"]
        frames = episode.observations.get("images", {})
        if not frames:
            raise ValueError(f"{path}:{name}: the episode has no camera images")
        chosen = tuple(cameras) if cameras else tuple(sorted(frames))
        missing = [c for c in chosen if c not in frames]
        if missing:
            raise ValueError(f"{path}:{name}: no camera {missing} (it has {sorted(frames)})")
        length = len(episode) + 1
        if label_data is not None:
            if name not in label_data["episodes"]:
                continue  # unlabelled episodes are skipped: the person did not look at them
            label = ranges_to_labels(length, label_data["episodes"][name], where=f"{labels_file}:{name}")
        else:
            label = observation_labels(episode)
        keep = np.zeros(length, bool)
        keep[::frame_stride] = True
        keep |= label  # positives are rare: keep all
        if exclude_before_success and label.any():
            first = int(np.argmax(label))
            keep[max(0, first - exclude_before_success):first] = False
        index = np.flatnonzero(keep)
        for cam in chosen:
            images.setdefault(cam, []).append(np.asarray(frames[cam])[index])
        labels.append(label[index])
        episode_ids.append(np.full(len(index), len(sources)))
        steps.append(index)
        sources.append(f"{Path(path).resolve()}:{name}")
    if not sources:
        raise ValueError(f"{path}: no (labelled) episodes")
    return LabelledFrames(
        {cam: np.concatenate(parts) for cam, parts in images.items()},
        np.concatenate(labels), np.concatenate(episode_ids), np.concatenate(steps), sources,
    )


def load_frames(
    paths: Sequence[str | os.PathLike],
    *,
    cameras: Sequence[str] | None = None,
    labels_files: Sequence[str | os.PathLike] = (),
    exclude_before_success: int = 0,
    frame_stride: int = 1,
) -> LabelledFrames:
    """``frames_from_episodes`` over several files (labels file i goes with episode file i when given)."""
    if labels_files and len(labels_files) != len(paths):
        raise ValueError(f"labels: {len(labels_files)} labels file(s) for {len(paths)} episode file(s)")
    parts = [
        frames_from_episodes(path, cameras=cameras, labels_file=labels_files[i] if labels_files else None,
                             exclude_before_success=exclude_before_success, frame_stride=frame_stride)
        for i, path in enumerate(paths)
    ]
    return LabelledFrames.concatenate(parts)


def split_by_episode(frames: LabelledFrames, holdout: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Train/held-out frame indices with whole episodes on one side (neighbouring frames are near copies).

    Each side gets episodes with and without positives where possible; with fewer than 4 episodes
    the split is by frame instead.
    """
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout: must be in (0, 1), got {holdout}")
    rng = np.random.default_rng(seed)
    episodes = np.unique(frames.episode)
    if len(episodes) < 4:
        order = rng.permutation(len(frames))
        cut = max(1, int(round(holdout * len(frames))))
        return np.sort(order[cut:]), np.sort(order[:cut])
    has_positive = np.array([frames.labels[frames.episode == e].any() for e in episodes])
    held = []
    for group in (episodes[has_positive], episodes[~has_positive]):
        group = rng.permutation(group)
        count = int(round(holdout * len(group)))
        if len(group) >= 2:
            count = min(max(count, 1), len(group) - 1)
        held.extend(group[:count])
    held_mask = np.isin(frames.episode, held)
    return np.flatnonzero(~held_mask), np.flatnonzero(held_mask)
