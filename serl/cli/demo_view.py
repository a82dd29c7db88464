"""``serl demos view FILE``: what an episode file holds — a summary table, a PNG plot, a short video.

The video shows one episode's camera frames side by side (GIF, or MP4 when imageio has an ffmpeg
or pyav backend); for state-only episodes it animates the gripper's path instead.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import tyro

from serl.data.episodes import Episode, read_config, read_episodes


@dataclasses.dataclass(frozen=True)
class DemoViewConfig:
    """Summarise, plot and render an HDF5 episode file."""

    file: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="FILE")]
    """The episode file (written by serl record-demos or the actor)."""
    episode: int = 0
    """Which episode (index among the complete ones) to plot and render."""
    plot: Path | None = None
    """PNG path; default FILE with suffix .png."""
    video: Path | None = None
    """GIF/MP4 path; default FILE with suffix .gif."""
    plot_file: bool = True
    """Write the PNG (--no-plot-file skips it)."""
    video_file: bool = True
    """Write the video (--no-video-file skips it)."""
    fps: int = 10
    """Video frame rate."""
    max_rows: int = 50
    """Episodes listed in the table (the summary counts all)."""


def summarize(episodes: list[Episode]) -> dict[str, Any]:
    """Counts, lengths, success and intervention rates, per-dimension action ranges."""
    if not episodes:
        return {"episodes": 0}
    lengths = np.array([len(e) for e in episodes])
    actions = np.concatenate([e.actions for e in episodes if len(e)], axis=0) if lengths.sum() else np.zeros((0, 0))
    intervened = np.concatenate([e.intervened for e in episodes]) if lengths.sum() else np.zeros(0, bool)
    return {
        "episodes": len(episodes),
        "steps": int(lengths.sum()),
        "successes": int(sum(e.success for e in episodes)),
        "success_rate": float(np.mean([e.success for e in episodes])),
        "length_mean": float(lengths.mean()),
        "length_min": int(lengths.min()),
        "length_max": int(lengths.max()),
        "intervention_rate": float(intervened.mean()) if intervened.size else 0.0,
        "action_min": actions.min(axis=0).round(4).tolist() if actions.size else [],
        "action_max": actions.max(axis=0).round(4).tolist() if actions.size else [],
        "action_mean": actions.mean(axis=0).round(4).tolist() if actions.size else [],
        "state_keys": sorted(episodes[0].observations.get("state", {})),
        "cameras": {k: list(v.shape[1:]) for k, v in episodes[0].observations.get("images", {}).items()},
        "sources": sorted({str(e.attrs.get("source", "")) for e in episodes}),
    }


def acted_by(sources: list[str]) -> str:
    """Who the teleop steps came from, by the episodes' recorded source (the scripted expert acts through teleop)."""
    if sources == ["scripted"]:
        return "scripted-expert"
    if sources == ["teleop"]:
        return "human"
    return "teleop (" + ", ".join(source or "unknown source" for source in sources) + ")"


def print_summary(path: Path, episodes: list[Episode], summary: dict[str, Any], max_rows: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{path}: {summary['episodes']} episodes")
    for column in ("#", "group", "length", "success", "return", "teleop %", "source"):
        table.add_column(column, justify="right" if column not in ("group", "source") else "left")
    for i, episode in enumerate(episodes[:max_rows]):
        table.add_row(
            str(i), str(episode.attrs.get("name", "")), str(len(episode)), "yes" if episode.success else "no",
            f"{float(episode.rewards.sum()):.2f}", f"{100 * float(episode.intervened.mean()) if len(episode) else 0:.0f}",
            str(episode.attrs.get("source", "")),
        )
    if len(episodes) > max_rows:
        table.add_row("…", f"{len(episodes) - max_rows} more", "", "", "", "", "")
    console.print(table)
    if summary["episodes"]:
        console.print(
            f"steps {summary['steps']} · success {summary['successes']}/{summary['episodes']} "
            f"({100 * summary['success_rate']:.0f} %) · length {summary['length_mean']:.1f} "
            f"[{summary['length_min']}, {summary['length_max']}] · {acted_by(summary['sources'])} steps "
            f"{100 * summary['intervention_rate']:.0f} %"
        )
        console.print(f"action min  {np.array(summary['action_min'])}")
        console.print(f"action max  {np.array(summary['action_max'])}")
        console.print(f"state {summary['state_keys']} · cameras {summary['cameras'] or 'none'}")


def save_plot(episodes: list[Episode], index: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    episode = episodes[index]
    fig, axes = plt.subplots(3, 1, figsize=(9, 9))
    steps = np.arange(len(episode))
    for dim in range(episode.actions.shape[1]):
        axes[0].plot(steps, episode.actions[:, dim], label=f"a{dim}")
    axes[0].set_title(f"episode {index} ({episode.attrs.get('name', '')}): executed actions")
    axes[0].legend(ncol=7, fontsize="small")
    axes[0].set_ylim(-1.1, 1.1)
    axes[1].step(steps, episode.rewards, where="post", label="reward")
    axes[1].fill_between(steps, 0, episode.intervened.astype(float), step="post", alpha=0.3, label="human")
    axes[1].step(steps, episode.succeed.astype(float), where="post", linestyle="--", label="succeed")
    axes[1].set_title("reward, interventions, success")
    axes[1].legend(fontsize="small")
    lengths = [len(e) for e in episodes]
    colours = ["tab:green" if e.success else "tab:red" for e in episodes]
    axes[2].bar(np.arange(len(episodes)), lengths, color=colours)
    axes[2].set_title("episode lengths (green: success)")
    axes[2].set_xlabel("episode")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _trajectory_frames(episode: Episode) -> np.ndarray:
    """Frames of the gripper path (top view and height) for state-only episodes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    state = episode.observations.get("state", {})
    pose = state.get("tcp_pose")
    if pose is None:
        raise ValueError("video: the episode has neither images nor a tcp_pose state entry")
    xyz = np.asarray(pose)[:, :3]
    fig, (top, side) = plt.subplots(1, 2, figsize=(6, 3), dpi=64)
    pad = 0.01
    top.plot(xyz[:, 0], xyz[:, 1], color="0.8")
    top.set_xlim(xyz[:, 0].min() - pad, xyz[:, 0].max() + pad)
    top.set_ylim(xyz[:, 1].min() - pad, xyz[:, 1].max() + pad)
    top.set_title("gripper x-y")
    side.plot(xyz[:, 2], color="0.8")
    side.set_title("gripper z")
    fig.tight_layout()
    path_top, = top.plot([], [], color="tab:blue", animated=True)
    head, = top.plot([], [], "o", color="tab:red", animated=True)
    path_side, = side.plot([], [], color="tab:blue", animated=True)
    label = side.text(0.02, 0.92, "", transform=side.transAxes, animated=True)
    fig.canvas.draw()
    background = fig.canvas.copy_from_bbox(fig.bbox)
    frames = []
    # blitting: the static parts are drawn once, only the moving artists per frame
    for t in range(len(xyz)):
        fig.canvas.restore_region(background)
        path_top.set_data(xyz[: t + 1, 0], xyz[: t + 1, 1])
        head.set_data(xyz[t : t + 1, 0], xyz[t : t + 1, 1])
        path_side.set_data(np.arange(t + 1), xyz[: t + 1, 2])
        label.set_text(f"step {t}")
        for artist in (path_top, head):
            top.draw_artist(artist)
        for artist in (path_side, label):
            side.draw_artist(artist)
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return np.stack(frames)


def episode_frames(episode: Episode) -> np.ndarray:
    images = episode.observations.get("images", {})
    if images:
        return np.concatenate([images[name] for name in sorted(images)], axis=2)
    return _trajectory_frames(episode)


def save_video(episode: Episode, path: Path, fps: int) -> Path:
    import imageio.v3 as iio

    frames = episode_frames(episode)
    if path.suffix.lower() == ".gif":
        iio.imwrite(path, frames, duration=1000.0 / fps, loop=0)
        return path
    try:
        iio.imwrite(path, frames, fps=fps)
        return path
    except (ValueError, ImportError, OSError):
        fallback = path.with_suffix(".gif")
        iio.imwrite(fallback, frames, duration=1000.0 / fps, loop=0)
        print(f"[demos view] no MP4 writer (pip install 'imageio[ffmpeg]'); wrote {fallback}", file=sys.stderr)
        return fallback


def demo_view(cfg: DemoViewConfig) -> None:
    """Print the summary; save the plot and the video of ``cfg.episode``."""
    if not cfg.file.exists():
        raise ValueError(f"file: {cfg.file} does not exist")
    episodes = list(read_episodes(cfg.file))
    summary = summarize(episodes)
    print_summary(cfg.file, episodes, summary, cfg.max_rows)
    config = read_config(cfg.file)
    if config.get("observation"):
        print(f"observation layout: {config['observation']}")
    if not episodes:
        return
    if not 0 <= cfg.episode < len(episodes):
        raise ValueError(f"episode: expected 0..{len(episodes) - 1}, got {cfg.episode}")
    if cfg.plot_file:
        plot = save_plot(episodes, cfg.episode, cfg.plot or cfg.file.with_suffix(".png"))
        print(f"plot: {plot}")
    if cfg.video_file:
        video = save_video(episodes[cfg.episode], cfg.video or cfg.file.with_suffix(".gif"), cfg.fps)
        print(f"video: {video}")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["view"]:
        args = args[1:]
    demo_view(tyro.cli(DemoViewConfig, args=args, prog="serl demos view"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
