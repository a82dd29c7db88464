"""``serl record-demos <task> --n 20``: teleop (or script) the twin or the real arm, write demos to HDF5.

Each finished episode is written to the file at once (serl.data.episodes), so Ctrl-C or a crash
keeps every finished episode; running the command again on the same file appends.

Keys (terminal, or the keyboard teleop itself)::

    enter      the episode succeeded: end and keep it
    n          end the episode as a failure (kept only with --keep-failed)
    backspace  discard the last kept episode
    q          quit (the episode in progress is dropped)

On a gamepad, start = success, back = discard last. Success is also taken from the task's reward
(the twin's ground truth) when it has one.

``--console`` serves the training console page (its address is printed): its success, failure (also
"end episode") and discard buttons act as the keys above, pause holds the arm, the page shows the kept
count, and ``--teleop browser`` drives the arm from the page.

Observations are stored as the policy sees them before flattening: ``RelativeFrame`` and
``QuatToEuler`` applied (the actor's default stack), actions in the same frame. The file's
``config`` attribute records that layout (``observation.state_keys`` is the flattening order).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import gymnasium as gym
import numpy as np
import tyro

from robot_servers.clock import PeriodicClock
from serl.data.episodes import EpisodeRecorder, EpisodeWriter, episode_count
from serl.devices.keyboard import TerminalKeyboard, TerminalKeyReader
from serl.envs.dual_franka_env import DualFrankaEnv, robot_env_under
from serl.envs.franka_env import franka_env_under
from serl.envs.intervention import InterventionWrapper
from serl.runtime.env_config import EnvConfig
from serl.runtime.envs import ObservationWrappers, build_env

SUCCESS_KEYS = ("enter", "start")
FAIL_KEYS = ("n",)
DISCARD_KEYS = ("backspace", "back")
QUIT_KEYS = ("q", "escape")


@dataclasses.dataclass(frozen=True)
class RecordDemosConfig:
    """Record demonstrations into an HDF5 episode file."""

    task: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="TASK")] = "PandaPickCube"
    """Task name (serl.envs.tasks), e.g. PandaPickCube, PandaPegInsertion."""
    n: int = 20
    """Episodes to keep (successful ones, unless --keep-failed)."""
    teleop: Literal["scripted", "keyboard", "spacemouse", "gamepad", "browser"] = "keyboard"
    """Who drives: the scripted expert (twin only: it reads the twin's ground-truth scene), a device, or the
    console page (browser; needs --console)."""
    out: Path = Path("demos.h5")
    """Output file; appended to when it exists."""
    seed: int = 0
    """Seed of the twin and the first reset."""
    pixels: bool = False
    """Record the task's cameras (pixel variant)."""
    overrides: tuple[str, ...] = ()
    """Task config overrides as key=value (JSON values), e.g. max_episode_steps=50."""
    robot_url: str | None = None
    """Robot server URL (real arm or served twin); None runs the twin in-process."""
    robot_token: str | None = None
    """Bearer token for the robot server."""
    keep_failed: bool = False
    """Also keep episodes that did not succeed (marked success=False)."""
    max_episodes: int = 0
    """Stop after this many attempts (0: 3*n for the scripted expert, unlimited for people)."""
    noise: float = 0.1
    """Scripted expert: std of the action noise."""
    realtime: bool | None = None
    """Keep the control period on a lockstep twin (default: yes for people, no for the script)."""
    display: bool = True
    """Live progress table (off: one line per episode)."""
    relative_frame: bool = True
    """Store observations/actions in the reset frame (RelativeFrame), as the actor's default stack."""
    euler: bool = True
    """Store robot poses as xyz + euler (QuatToEuler), as the actor's default stack."""
    console: bool = False
    """Serve the training console page: watch, pause, success / fail / discard, and --teleop browser."""
    console_host: str = "127.0.0.1"
    """Where the console listens (beyond loopback needs --console-token)."""
    console_port: int = 8765
    """The console's port (0: any free one)."""
    console_token: str | None = None
    """The console's token (default: $SERL_CONSOLE_TOKEN when set)."""

    def __post_init__(self):
        if self.teleop == "browser" and not self.console:
            raise ValueError("teleop: 'browser' drives the arm from the console page; add --console")
        if self.n <= 0:
            raise ValueError(f"n: must be > 0, got {self.n}")
        if self.max_episodes < 0:
            raise ValueError(f"max_episodes: must be >= 0, got {self.max_episodes}")
        if self.noise < 0:
            raise ValueError(f"noise: must be >= 0, got {self.noise}")


@dataclasses.dataclass
class Progress:
    kept: int = 0
    failed: int = 0
    discarded: int = 0
    successes: int = 0
    attempts: int = 0
    step: int = 0
    episode_return: float = 0.0
    interventions: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)
    last_message: str = ""
    status: dict = dataclasses.field(default_factory=dict)
    console_url: str = ""

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def recording_env(cfg: RecordDemosConfig, hub=None, robot=None) -> InterventionWrapper:
    """The task env (twin in-process or over HTTP) with the observation wrappers the demos are stored in
    (not flattened) and the teleop device outermost (``hub``: the console's, for the browser teleop; ``robot``:
    the robot client of an env built before, for the next task of a cycle)."""
    env_cfg = EnvConfig(task=cfg.task, pixels=cfg.pixels, robot_url=cfg.robot_url, robot_token=cfg.robot_token,
                        overrides=cfg.overrides)
    options = {"noise": cfg.noise, "seed": cfg.seed} if cfg.teleop == "scripted" else {}
    if cfg.teleop == "browser":
        options["hub"] = hub
    stored = ObservationWrappers(relative_frame=cfg.relative_frame, euler=cfg.euler, flat=False)
    env = build_env(env_cfg, seed=cfg.seed, teleop=cfg.teleop, teleop_options=options, observations=stored,
                    robot=robot)
    if robot_env_under(env) is None:
        env.close()
        raise ValueError(f"task: record-demos records robot tasks (one arm or two), got {cfg.task!r}")
    assert isinstance(env, InterventionWrapper)  # build_env puts the teleop device outermost
    return env


def file_config(cfg: RecordDemosConfig, env: gym.Env) -> dict[str, Any]:
    """The file's ``config`` attribute: how it was recorded and the stored observation and action layout."""
    base = robot_env_under(env)
    task = base.task
    state_space = env.observation_space["state"]
    order = [k for k in base.state_order if k in state_space.spaces]
    return {
        "recording": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()
                      if k not in ("robot_token",)},
        "task": dataclasses.asdict(task),
        "observation": {
            "relative_frame": cfg.relative_frame,
            "euler": cfg.euler,
            "state_keys": order,
            "state_sizes": {k: int(np.prod(state_space[k].shape)) for k in order},
            "images": sorted(env.observation_space.spaces.get("images", {}).keys()) if "images" in env.observation_space.spaces else [],
        },
        "action": {"dim": int(env.action_space.shape[0]), "frame": "reset" if cfg.relative_frame else task.action_frame},
    }


CONSOLE_KEYS = {"mark_success": "enter", "mark_failure": "n", "end_episode": "n", "discard": "backspace"}
"""The console page's commands as recorder keys."""


class Controls:
    """Recorder keys from the teleop's buttons, the console page's commands and, when the teleop is not the
    terminal keyboard, the terminal."""

    def __init__(self, teleop_kind: str, teleop, console=None):
        self.console = console
        self.reader = None
        self._held: set[str] = set()
        self._level_buttons = teleop_kind in ("spacemouse", "gamepad")
        if teleop_kind in ("spacemouse", "gamepad") or (teleop_kind == "keyboard" and not isinstance(teleop, TerminalKeyboard)):
            with contextlib.suppress(Exception):
                if sys.stdin is not None and sys.stdin.isatty():
                    self.reader = TerminalKeyReader()

    def keys(self, buttons: dict[str, bool]) -> set[str]:
        """Keys pressed since the last call; a held device button counts once (on its press)."""
        held = {k for k, v in buttons.items() if v}
        if self._level_buttons:  # gamepad/SpaceMouse report buttons while held; keyboards report each press once
            pressed, self._held = held - self._held, held
        else:
            pressed = held
        if self.reader is not None:
            pressed |= {event.key.lower() if len(event.key) == 1 else event.key for event in self.reader.drain()}
        if self.console is not None:
            for name in self.console.hub.commands():
                if name in CONSOLE_KEYS:
                    pressed.add(CONSOLE_KEYS[name])
                elif name == "safety_stop":
                    self.console.safety_stop()
                elif name == "recover":
                    self.console.recover()
        return pressed

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


def _render(progress: Progress, cfg: RecordDemosConfig):
    from rich.table import Table

    table = Table(title=f"record-demos {cfg.task} → {cfg.out}  ({cfg.teleop})", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("kept", f"{progress.kept} / {cfg.n}")
    table.add_row("successes", str(progress.successes))
    table.add_row("failed / discarded", f"{progress.failed} / {progress.discarded}")
    table.add_row("episode", f"#{progress.attempts + 1}  step {progress.step}  return {progress.episode_return:.2f}"
                  f"  {'expert' if cfg.teleop == 'scripted' else 'human'} steps {progress.interventions}")
    table.add_row("elapsed", f"{progress.elapsed():.1f} s")
    for key, value in progress.status.items():
        table.add_row(key, value)
    if cfg.teleop != "scripted":
        table.add_row("keys", "enter success · n fail · backspace discard last · q quit")
    if progress.console_url:
        table.add_row("console", progress.console_url)
        if cfg.teleop == "keyboard":
            table.add_row("move", "w/s x · a/d y · r/f z · j/l i/k u/o rotate · c close · v open")
    if progress.last_message:
        table.add_row("", progress.last_message)
    return table


def _status(env: gym.Env) -> dict[str, str]:
    """What a person needs to steer without seeing the twin: gripper and object positions."""
    base = robot_env_under(env)
    arms = base.arms if isinstance(base, DualFrankaEnv) else {"": base}
    out = {}
    for arm, arm_env in arms.items():
        state, label = arm_env.state, f"{arm} " if arm else ""
        if state is None:
            continue
        tcp = np.asarray(state.tcp_pose[:3])
        out[f"{label}tcp xyz"] = np.array2string(tcp, precision=3, suppress_small=True)
        out[f"{label}gripper width"] = f"{state.gripper_width * 1000:.1f} mm"
        with contextlib.suppress(NotImplementedError, AttributeError, OSError):
            for name, pose in arm_env.client.scene().items():
                out[f"{label}{name} − tcp"] = np.array2string(np.asarray(pose[:3]) - tcp, precision=3,
                                                              suppress_small=True)
    return out


def record_demos(cfg: RecordDemosConfig) -> None:
    """Run the recording loop until ``n`` episodes are kept, the attempts run out, or the user quits. A task
    cycle's name records its tasks in turn (scripted, ``record_cycle_demos``), one file per task beside ``out``."""
    from serl.envs.task_cycles import get_cycle, is_cycle

    if is_cycle(cfg.task):
        if cfg.teleop != "scripted" or cfg.robot_url is not None:
            raise ValueError(f"task: the cycle {cfg.task} is recorded by the scripted expert on the in-process twin "
                             "(--teleop scripted, no --robot-url)")
        outs = {task: cfg.out.with_name(f"{cfg.out.stem}_{task}{cfg.out.suffix}") for task in get_cycle(cfg.task).tasks}
        record_cycle_demos(cfg.task, outs, cfg.n, seed=cfg.seed, noise=cfg.noise, pixels=cfg.pixels,
                           overrides=cfg.overrides)
        return
    hub = console = None
    if cfg.console:
        from serl.console.server import ConsoleConfig
        from serl.runtime.actor import ActorConsole  # the policy stack (JAX) loads only with the console

        console_cfg = ConsoleConfig(host=cfg.console_host, port=cfg.console_port, token=cfg.console_token)
        hub = console_cfg.hub()
    env = recording_env(cfg, hub)
    progress = Progress()
    if hub is not None:
        console = ActorConsole(hub, env, None, who="record-demos")
        try:
            progress.console_url = console.serve(console_cfg) or ""
        except BaseException:
            env.close()
            raise
    teleop = env.teleop
    writer = EpisodeWriter(cfg.out, config=file_config(cfg, env))
    already = episode_count(cfg.out)
    recorder = EpisodeRecorder(task=cfg.task, source="scripted" if cfg.teleop == "scripted" else "teleop")
    controls = Controls(cfg.teleop, teleop, console)
    realtime = cfg.teleop != "scripted" if cfg.realtime is None else cfg.realtime
    period = 1.0 / robot_env_under(env).task.control_hz
    max_attempts = cfg.max_episodes or (3 * cfg.n if cfg.teleop == "scripted" else 0)
    kept_names: list[str] = []
    total_steps = 0
    pending: set[str] = set()  # page commands given while the arm was held, for the next step
    policy_action = np.zeros(env.action_space.shape, dtype=env.action_space.dtype)
    live = None
    interactive_display = cfg.display and sys.stdout.isatty()
    if interactive_display:
        from rich.live import Live

        live = Live(_render(progress, cfg), refresh_per_second=8, transient=False)
        live.start()

    def report(message: str) -> None:
        progress.last_message = message
        if live is None:
            print(f"[record-demos] {message}", flush=True)

    def counts() -> None:
        if hub is not None:  # the page's episode counter, in the slot a learner's status takes during training
            hub.publish_learner({"demos_kept": progress.kept, "demos_wanted": cfg.n, "successes": progress.successes,
                                 "failed": progress.failed, "discarded": progress.discarded,
                                 "attempts": progress.attempts})

    def publish(obs, acting: str, reward: float = 0.0, success: bool = False) -> None:
        if console is not None:
            console.publish(obs, acting, steps=total_steps, episode=progress.attempts + 1, episode_step=progress.step,
                            episode_return=progress.episode_return, success=success, reward=reward)

    try:
        quit_requested = False
        while progress.kept < cfg.n and not quit_requested and (not max_attempts or progress.attempts < max_attempts):
            obs, _ = env.reset(seed=cfg.seed + already + progress.attempts)
            recorder.start(obs)
            progress.step, progress.episode_return, progress.interventions = 0, 0.0, 0
            if live is None and cfg.teleop != "scripted":
                report(f"episode {progress.attempts + 1}: started (enter success · n fail · backspace discard last · q quit)")
            outcome = None
            counts()
            clock = PeriodicClock(period)
            while outcome is None:
                while console is not None and console.holding:
                    console.hold()
                    publish(obs, "paused")
                    pending |= controls.keys({})
                obs, reward, terminated, truncated, info = env.step(policy_action)
                recorder.add(info["executed_action"], reward, obs, terminated, truncated, info)
                progress.step += 1
                total_steps += 1
                progress.episode_return += reward
                progress.interventions += bool(info.get("intervened"))
                publish(obs, "human" if info.get("intervened") else "held", float(reward), bool(info.get("succeed")))
                keys = controls.keys(info.get("teleop_buttons", {})) | pending
                pending = set()
                if keys & set(QUIT_KEYS):
                    quit_requested, outcome = True, "quit"
                elif keys & set(DISCARD_KEYS) and kept_names:
                    name = kept_names.pop()
                    writer.discard(name)
                    progress.kept -= 1
                    progress.discarded += 1
                    report(f"discarded {name}")
                    counts()
                if outcome is None and keys & set(SUCCESS_KEYS):
                    recorder.mark_success()
                    progress.episode_return += 1.0 - reward
                    outcome = "success"
                elif outcome is None and keys & set(FAIL_KEYS):
                    outcome = "failure"
                elif outcome is None and (terminated or truncated):
                    outcome = "success" if info.get("succeed") else "failure"
                if live is not None and progress.step % 2 == 0:
                    progress.status = _status(env)
                    live.update(_render(progress, cfg))
                if realtime and outcome is None:
                    clock.wait()
            progress.attempts += 1
            if outcome == "quit":
                recorder.discard()
                report("quit: the episode in progress was dropped")
                break
            success = outcome == "success"
            episode = recorder.finish(success=success, teleop=cfg.teleop, seed=cfg.seed + already + progress.attempts - 1)
            if success or cfg.keep_failed:
                name = writer.write(episode)
                kept_names.append(name)
                progress.kept += 1
            progress.successes += success
            progress.failed += not success
            report(f"episode {progress.attempts}: {'success' if success else 'failure'} in {len(episode)} steps"
                   f"{'' if success or cfg.keep_failed else ' (not kept)'}; kept {progress.kept}/{cfg.n}")
            counts()
            if live is not None:
                live.update(_render(progress, cfg))
    except KeyboardInterrupt:
        report("interrupted: every finished episode is in the file")
    finally:
        if live is not None:
            live.update(_render(progress, cfg))
            live.stop()
        controls.close()
        if console is not None:
            console.close()
        env.close()
        writer.close()
    print(f"[record-demos] kept {progress.kept} episode(s) ({progress.successes} successful of {progress.attempts}) "
          f"in {progress.elapsed():.1f} s → {cfg.out} (now {episode_count(cfg.out)} in the file)", flush=True)


@dataclasses.dataclass
class _DemoLane:
    task: str
    env: InterventionWrapper
    writer: EpisodeWriter
    steps: int = 0
    episodes: int = 0
    kept: int = 0


def record_cycle_demos(cycle_name: str, outs: dict[str, Path], n: int, *, seed: int = 0, noise: float = 0.1,
                       pixels: bool = False, overrides: tuple[str, ...] = ()) -> dict[str, int]:
    """Scripted demos of every task of a twin task cycle, recorded as the cycle trains: in turn, on one twin,
    without scene resets (each task starts where the previous one left the scene). Writes ``n`` successful
    episodes per task to ``outs[task]``; returns the kept count per task."""
    from serl.envs.task_cycles import get_cycle
    from serl.runtime.cycle import CycleTurns

    cycle = get_cycle(cycle_name)
    lanes: list[_DemoLane] = []
    try:
        for task in cycle.tasks:
            cfg = RecordDemosConfig(task=task, n=n, teleop="scripted", out=outs[task], seed=seed, noise=noise,
                                    pixels=pixels, overrides=overrides, display=False)
            robot = franka_env_under(lanes[0].env).client if lanes else None
            env = recording_env(cfg, robot=robot)
            lanes.append(_DemoLane(task, env, EpisodeWriter(cfg.out, config=file_config(cfg, env))))
        turns = CycleTurns(cycle_name, lanes, None, seed)
        action = np.zeros(lanes[0].env.action_space.shape, dtype=lanes[0].env.action_space.dtype)
        lane, obs = turns.next_episode(None, False)
        attempts = 0
        while any(each.kept < n for each in lanes) and attempts < 3 * n * len(lanes):
            recorder = EpisodeRecorder(task=lane.task, source="scripted")
            recorder.start(obs)
            done = False
            while not done:
                obs, reward, terminated, truncated, info = lane.env.step(action)
                recorder.add(info["executed_action"], reward, obs, terminated, truncated, info)
                lane.steps += 1
                done = terminated or truncated
            attempts += 1
            lane.episodes += 1
            success = bool(info.get("succeed"))
            episode = recorder.finish(success=success, teleop="scripted", seed=seed + attempts)
            if success and lane.kept < n:
                lane.writer.write(episode)
                lane.kept += 1
            lane, obs = turns.next_episode(lane, success)
    finally:
        for each in lanes:
            each.writer.close()
        for each in reversed(lanes):
            each.env.close()
    kept = {each.task: each.kept for each in lanes}
    files = ", ".join(f"{count} → {outs[task]}" for task, count in kept.items())
    print(f"[record-demos] {cycle_name}: {attempts} episodes in turn, {turns.fallbacks} fallback(s); kept {files}",
          flush=True)
    return kept


def main(argv: list[str] | None = None) -> int:
    cfg = tyro.cli(RecordDemosConfig, args=argv, prog="serl record-demos")
    record_demos(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
