"""Held-out evaluation: precision, recall, F1, ROC AUC, a threshold for a target precision, and a report
directory with a precision–recall curve, a confusion matrix, a sheet of the worst mistakes and summary.json."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np


def binary_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Accuracy, precision, recall, F1, confusion counts at ``threshold`` (positive: prob >= threshold), ROC AUC."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, bool)
    predicted = probs >= threshold
    tp = int(np.sum(predicted & labels))
    fp = int(np.sum(predicted & ~labels))
    fn = int(np.sum(~predicted & labels))
    tn = int(np.sum(~predicted & ~labels))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "threshold": float(threshold), "n": int(len(labels)), "positives": int(labels.sum()),
        "accuracy": (tp + tn) / max(1, len(labels)), "precision": precision, "recall": recall, "f1": f1,
        "roc_auc": roc_auc(probs, labels), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


def roc_auc(probs: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann–Whitney U with tied ranks averaged); None with one class only."""
    labels = np.asarray(labels, bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        return None
    order = np.argsort(probs, kind="mergesort")
    sorted_probs = np.asarray(probs)[order]
    ranks = np.empty(len(probs), np.float64)
    ranks[order] = np.arange(1, len(probs) + 1)
    # average the ranks of ties
    _, first, counts = np.unique(sorted_probs, return_index=True, return_counts=True)
    for start, count in zip(first, counts):
        if count > 1:
            ranks[order[start:start + count]] = start + (count + 1) / 2
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def precision_recall_curve(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, threshold) at every distinct probability, thresholds ascending."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, bool)
    thresholds = np.unique(probs)
    order = np.argsort(-probs, kind="mergesort")
    sorted_probs, sorted_labels = probs[order], labels[order]
    tp_cum = np.cumsum(sorted_labels)
    fp_cum = np.cumsum(~sorted_labels)
    # predictions >= t are the first k of the descending order
    k = np.searchsorted(-sorted_probs, -thresholds, side="right")
    tp, fp = tp_cum[k - 1], fp_cum[k - 1]
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / max(1, int(labels.sum()))
    return precision, recall, thresholds


def threshold_for_precision(probs: np.ndarray, labels: np.ndarray, target: float = 0.99) -> tuple[float, bool]:
    """The lowest threshold whose held-out precision is >= ``target`` (most recall at that precision).

    Returns (threshold, reached). When no threshold reaches the target, the one with the highest precision
    (ties: highest recall) is returned with ``reached=False``.
    """
    labels = np.asarray(labels, bool)
    if not labels.any():
        return 1.0, False
    precision, recall, thresholds = precision_recall_curve(probs, labels)
    useful = recall > 0
    ok = np.flatnonzero((precision >= target) & useful)
    if len(ok):
        return float(thresholds[ok[0]]), True
    candidates = np.flatnonzero(useful)
    best = candidates[np.lexsort((-recall[candidates], -precision[candidates]))[0]]
    return float(thresholds[best]), False


def write_report(
    out: str | os.PathLike,
    probs: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    images: Mapping[str, np.ndarray] | None = None,
    sources: list[str] | None = None,
    extra: dict | None = None,
    worst: int = 8,
) -> dict:
    """Write ``summary.json``, ``pr_curve.png``, ``confusion.png`` and ``mistakes.png`` to ``out``; return the summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, bool)
    metrics = binary_metrics(probs, labels, threshold)
    at_half = binary_metrics(probs, labels, 0.5)

    precision, recall, thresholds = precision_recall_curve(probs, labels)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(recall, precision, marker=".", lw=1)
    ax.scatter([metrics["recall"]], [metrics["precision"]], color="red", zorder=3, label=f"threshold {threshold:.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    auc = metrics["roc_auc"]
    ax.set_title(f"held-out precision–recall (ROC AUC {auc:.3f})" if auc is not None else "held-out precision–recall")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(out / "pr_curve.png", dpi=100)
    plt.close(fig)

    matrix = np.array([[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]])
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="black", fontsize=12)
    ax.set_xticks([0, 1], ["fail", "success"])
    ax.set_yticks([0, 1], ["fail", "success"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    ax.set_title(f"confusion at {threshold:.3f}")
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=100)
    plt.close(fig)

    false_pos = np.flatnonzero(~labels)[np.argsort(-probs[~labels])][:worst]
    false_pos = false_pos[probs[false_pos] >= threshold] if len(false_pos) else false_pos
    false_neg = np.flatnonzero(labels)[np.argsort(probs[labels])][:worst]
    false_neg = false_neg[probs[false_neg] < threshold] if len(false_neg) else false_neg
    if images:
        mistakes_sheet(out / "mistakes.png", images, probs, false_pos, false_neg, sources)

    summary = {
        "threshold": float(threshold),
        "metrics": metrics,
        "metrics_at_0.5": at_half,
        "false_positives": [_describe(i, probs, sources) for i in false_pos],
        "false_negatives": [_describe(i, probs, sources) for i in false_neg],
        "files": {"pr_curve": "pr_curve.png", "confusion": "confusion.png", "mistakes": "mistakes.png" if images else None},
        **(extra or {}),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    return summary


def mistakes_sheet(path, images: Mapping[str, np.ndarray], probs, false_pos, false_neg, sources=None) -> None:
    """PNG grid: one row per mistake (false positives first), one column per camera, with its probability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("false positive", int(i)) for i in false_pos] + [("false negative", int(i)) for i in false_neg]
    cameras = list(images)
    if not rows:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "no mistakes on the held-out set", ha="center", va="center")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return
    fig, axes = plt.subplots(len(rows), len(cameras), figsize=(2.2 * len(cameras), 2.2 * len(rows)), squeeze=False)
    for r, (kind, index) in enumerate(rows):
        for c, cam in enumerate(cameras):
            ax = axes[r][c]
            ax.imshow(images[cam][index])
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                where = f"\n{os.path.basename(sources[index])}" if sources else ""
                ax.set_ylabel(f"{kind}\np={probs[index]:.3f}{where}", fontsize=7)
            if r == 0:
                ax.set_title(cam, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _describe(index, probs, sources) -> dict:
    entry = {"index": int(index), "probability": float(probs[index])}
    if sources:
        entry["frame"] = sources[index]
    return entry


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
