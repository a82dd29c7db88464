"""A run's learning curves from its ``episodes.jsonl``, the runs under ``runs/``, and a summary PNG.

Episodes the console discarded are left out: either a line ``{"discarded": <episode number>}`` after the
episode, or the episode's own line with ``"discarded": true``. After ``--resume`` from an earlier checkpoint
the log can go on from an episode number it already holds; the later lines supersede the earlier ones.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

WINDOW = 20  # the rolling success window, as in the live table and benchmarks/sample_efficiency.py
MAX_POINTS = 2000
SERIES = ("success_rate", "return", "length", "intervention_rate")
_TAIL_BYTES = 64 * 1024
_counts_cache: dict[Path, tuple[tuple[int, int], int]] = {}  # episodes.jsonl -> ((size, mtime_ns), episodes)


def is_run_dir(path: Path) -> bool:
    return (path / "episodes.jsonl").is_file() or (path / "config.json").is_file()


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _records(lines: Iterable[str]) -> list[tuple[int, dict]]:
    """The log's JSON objects with their line numbers."""
    records = []
    for number, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:  # a torn last line (the actor is writing it) or a damaged one
            continue
        if isinstance(record, dict):
            records.append((number, record))
    return records


def _episodes(lines: Iterable[str]) -> tuple[list[dict], int, dict[str, list[dict]]]:
    """The kept episodes in log order, how many were discarded, and, when several actors wrote the log
    (``"actor"`` in its lines), per actor id its own episodes; then ``env_steps`` is the total over all actors
    at each episode's end (each actor counted at its latest episode end) and ``actor_env_steps`` the actor's own."""
    groups: dict[str, list[tuple[int, dict]]] = {}
    records = _records(lines)
    for number, record in records:
        groups.setdefault(str(record.get("actor", "")), []).append((number, record))
    if len(groups) <= 1:
        kept, discarded = _actor_episodes(records)
        return kept, discarded, {}
    per_actor: dict[str, list[dict]] = {}
    discarded = 0
    for actor, group in groups.items():
        kept, dropped = _actor_episodes(group)
        discarded += dropped
        if kept:
            per_actor[actor] = kept
    latest: dict[str, float] = {}
    merged = sorted((episode for kept in per_actor.values() for episode in kept), key=lambda e: e["line"])
    for episode in merged:
        latest[episode["actor"]] = episode["actor_env_steps"] = episode["env_steps"]
        episode["env_steps"] = sum(latest.values())
    merged = [{**episode, "episode": number} for number, episode in enumerate(merged, 1)]
    return merged, discarded, per_actor


def _actor_episodes(records: Iterable[tuple[int, dict]]) -> tuple[list[dict], int]:
    """One actor's kept episode records, in order, and how many were discarded."""
    kept: list[dict] = []
    discarded = 0
    pending: set[int] = set()  # markers for an episode whose line has not been read
    for line, record in records:
        marker = record.get("discarded")
        if "env_steps" not in record and marker is not None and marker is not True:
            number = _number(marker)
            number = -1 if number is None else int(number)
            # the newest earlier line with that number: episode numbers repeat after a resume
            index = next((i for i in range(len(kept) - 1, -1, -1) if kept[i]["episode"] == number), None)
            if index is None:
                pending.add(number)
            else:
                del kept[index]
                discarded += 1
            continue
        steps = _number(record.get("env_steps"))
        success = _number(record.get("episode/success"))
        if steps is None or success is None:
            continue
        number = _number(record.get("episode"))
        episode = int(number) if number is not None else (kept[-1]["episode"] + 1 if kept else 1)
        if kept and episode <= kept[-1]["episode"]:  # resumed from a checkpoint before these episodes
            while kept and kept[-1]["episode"] >= episode:
                kept.pop()
            pending = {n for n in pending if n < episode}  # markers of the lost timeline
        if marker is True or episode in pending:
            pending.discard(episode)
            discarded += 1
            continue
        kept.append({
            "episode": episode, "env_steps": steps, "success": success,
            "return": _number(record.get("episode/return")), "length": _number(record.get("episode/length")),
            "intervention_rate": _number(record.get("episode/intervention_rate", 0.0)),
            "time": _number(record.get("time")), "line": line, "actor": str(record.get("actor", "")),
        })
    return kept, discarded


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []


def _with_rolling_success(episodes: list[dict]) -> list[dict]:
    total = 0.0
    for i, episode in enumerate(episodes):
        total += episode["success"]
        if i >= WINDOW:
            total -= episodes[i - WINDOW]["success"]
        episode["success_rate"] = total / min(i + 1, WINDOW)
    return episodes


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _series(episodes: list[dict], max_points: int, with_time: bool) -> dict[str, list]:
    """Per episode, or per bucket of consecutive episodes when there are more than ``max_points``: the
    bucket's last episode's steps, time and rolling success rate, and the mean of its other values."""
    size = max(1, math.ceil(len(episodes) / max(1, max_points)))
    buckets = [episodes[i:i + size] for i in range(0, len(episodes), size)]
    out: dict[str, list] = {"env_steps": [b[-1]["env_steps"] for b in buckets],
                            "episode": [float(b[-1]["episode"]) for b in buckets]}
    if with_time:
        out["time"] = [b[-1]["time"] for b in buckets]
    out["success_rate"] = [b[-1]["success_rate"] for b in buckets]
    for key in ("return", "length", "intervention_rate"):
        out[key] = [_mean([e[key] for e in b]) for b in buckets]
    return out


def read_curves(run_dir: Path, max_points: int = MAX_POINTS) -> dict[str, Any]:
    """The run's curves against env steps (``by_steps``) and wall time (``by_time``), JSON-able."""
    run_dir = Path(run_dir)
    episodes, discarded, per_actor = _episodes(_read_lines(run_dir / "episodes.jsonl"))
    _with_rolling_success(episodes)
    timed = [e for e in episodes if e["time"] is not None]
    if not episodes:
        note = "no episodes yet"
    elif not timed:
        note = "episodes.jsonl has no wall times (its lines carry no \"time\")"
    elif len(timed) < len(episodes):
        note = f"{len(episodes) - len(timed)} of {len(episodes)} episodes carry no wall time and are not in by_time"
    else:
        note = None
    last = episodes[-1] if episodes else None
    several = {"actors": {actor: {"episodes": len(kept), "by_steps": _series(_with_rolling_success(kept), max_points,
                                                                              with_time=False)}
                          for actor, kept in per_actor.items()}} if per_actor else {}
    return {
        "task": run_dir.parent.name,
        "name": run_dir.name,
        "episodes": len(episodes),
        "discarded": discarded,
        "window": WINDOW,
        "last": None if last is None else {
            "episode": last["episode"], "env_steps": last["env_steps"], "time": last["time"],
            "success_rate": last["success_rate"], "return": last["return"], "length": last["length"],
            "intervention_rate": last["intervention_rate"],
        },
        "by_steps": _series(episodes, max_points, with_time=False),
        "by_time": _series(timed, max_points, with_time=True) if timed else None,
        "wall_time": bool(timed) and len(timed) == len(episodes),
        "wall_time_note": note,
        **several,
    }


def episode_records(run_dir: Path) -> list[dict]:
    """The run's kept episodes in log order: ``env_steps`` (over all actors), ``success``, ``return``, ``length``,
    ``actor`` ("" for an actor without an id), and with several actors ``actor_env_steps``."""
    return _episodes(_read_lines(Path(run_dir) / "episodes.jsonl"))[0]


def _count_episodes(path: Path, stat: os.stat_result) -> int:
    """Complete episode lines less the discarded ones (cached while the file is unchanged); only lines that
    mention a discard are parsed, and episodes superseded after a resume are still counted."""
    key = (stat.st_size, stat.st_mtime_ns)
    cached = _counts_cache.get(path)
    if cached and cached[0] == key:
        return cached[1]
    count = 0
    with open(path, "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                continue  # the torn last line
            if b'"discarded"' not in line:
                count += b'"env_steps"' in line
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            if "env_steps" in record:
                count += record["discarded"] is not True
            else:
                count -= 1  # a marker: its episode's line was counted
    count = max(0, count)
    _counts_cache[path] = (key, count)
    return count


def _last_success_rate(path: Path, size: int) -> float | None:
    """The rolling success rate at the last episode, from the file's tail."""
    start = max(0, size - _TAIL_BYTES)
    while True:
        with open(path, "rb") as handle:
            handle.seek(start)
            lines = handle.read().decode(errors="replace").splitlines()
        if start:
            lines = lines[1:]  # starts mid-line
        episodes, _, _ = _episodes(lines)
        if len(episodes) >= WINDOW or not start:
            break
        start = max(0, start - 4 * _TAIL_BYTES)
    tail = episodes[-WINDOW:]
    return sum(e["success"] for e in tail) / len(tail) if tail else None


def list_runs(root: Path, task: str | None = None) -> list[dict[str, Any]]:
    """Runs under ``root`` (``<task>/<run name>/``), newest first."""
    root = Path(root)
    runs = []
    for task_dir in sorted(root.iterdir()) if root.is_dir() else []:
        if not task_dir.is_dir() or (task is not None and task_dir.name != task):
            continue
        for run_dir in task_dir.iterdir():
            if not run_dir.is_dir() or not is_run_dir(run_dir):
                continue
            log = run_dir / "episodes.jsonl"
            try:
                stat = log.stat()
            except FileNotFoundError:
                stat = None
            modified = [p.stat().st_mtime for p in (run_dir / "config.json", run_dir / "status" / "learner.json",
                                                     *(run_dir / "status").glob("actor*.json")) if p.exists()]
            if stat is not None:
                modified.append(stat.st_mtime)
            runs.append({
                "task": task_dir.name,
                "name": run_dir.name,
                "path": run_dir.relative_to(root).as_posix(),
                "episodes": _count_episodes(log, stat) if stat else 0,
                "success_rate": _last_success_rate(log, stat.st_size) if stat else None,
                "last_modified": max(modified, default=run_dir.stat().st_mtime),
            })
    runs.sort(key=lambda run: run["last_modified"], reverse=True)
    return runs


def write_summary_png(run_dir: Path) -> Path | None:
    """``run_dir/summary.png``: success rate, return, length and intervention rate against env steps (atomic
    replace), with several actors the total and a thin curve per actor; None when the run has no episodes."""
    run_dir = Path(run_dir)
    curves = read_curves(run_dir)
    if not curves["episodes"]:
        return None
    # a Figure without pyplot: no global backend switch or pyplot state, so a server thread can call this too
    from matplotlib.figure import Figure

    series = curves["by_steps"]
    fig = Figure(figsize=(10, 6.4))
    axes = fig.subplots(2, 2, squeeze=False).ravel()
    labels = {"success_rate": f"success (rolling {WINDOW} episodes)", "return": "return",
              "length": "episode length (steps)", "intervention_rate": "intervention rate"}
    actors = curves.get("actors", {})
    for ax, key in zip(axes, SERIES):
        for actor, own in actors.items():
            _plot(ax, own["by_steps"], key, linewidth=0.7, alpha=0.6, label=f"actor {actor}" if actor else "actor")
        _plot(ax, series, key, color="tab:blue", linewidth=1.2, label="all actors" if actors else None)
        ax.set(xlabel="env steps (all actors)" if actors else "env steps", ylabel=labels[key])
        ax.grid(alpha=0.3)
        if key in ("success_rate", "intervention_rate"):
            ax.set_ylim(-0.02, 1.02)
    if actors:
        axes[0].legend(loc="best", fontsize=7)
    discarded = f", {curves['discarded']} discarded" if curves["discarded"] else ""
    fig.suptitle(f"{curves['task']} / {curves['name']}: {curves['episodes']} episodes{discarded}")
    fig.tight_layout()
    path = run_dir / "summary.png"
    handle, tmp = tempfile.mkstemp(dir=run_dir, prefix=".summary.", suffix=".png.tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            fig.savefig(out, format="png", dpi=110)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _plot(ax, series: dict[str, list], key: str, **style) -> None:
    points = [(x, y) for x, y in zip(series["env_steps"], series[key]) if y is not None]
    ax.plot([x for x, _ in points], [y for _, y in points], **style)
