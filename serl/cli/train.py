"""``serl train``, ``serl learner`` and ``serl actor``.

``serl train <task>`` records scripted demos when none are given, starts the learner and the actor as
separate processes (optionally a twin robot server the actor talks to over HTTP), shows one progress
display for all of them, and on Ctrl-C stops them in order: actor, then learner (which checkpoints).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import tyro

from serl.agents.sac import SACConfig
from serl.cli.eval import evaluate
from serl.console.server import TOKEN_ENV, ConsoleConfig
from serl.cli.record_demos import RecordDemosConfig, record_demos
from serl.runtime import actor as actor_process
from serl.runtime import learner as learner_process
from serl.runtime.config import (
    ActorConfig,
    EnvConfig,
    EvalConfig,
    LearnerConfig,
    NetConfig,
    RunConfig,
    default_run_name,
    latest_run,
    to_jsonable,
    write_config,
)
from serl.runtime.envs import check_task, import_task_module
from serl.runtime.logging import TrainProgress, read_status

COMPILE_GRACE_S = 600.0
"""How long a stopping ``serl train`` waits for a learner that is compiling its first update."""

LearnerCommand = LearnerConfig
ActorCommand = ActorConfig

# What --task-defaults adds per sim task: the sparse lift reward alone gives the critic almost no action signal
# within 10k steps (see docs), so PickCube learns from the potential-shaped reward and a discrete grasp critic, and,
# as SERL's and gym-hil's sim PickCube, moves the hand without turning it (docs/env.md, "Action") and sees the
# cube's position only: a cube's quaternion changes under its symmetries, and on toppled cubes the critic
# extrapolated and diverged.
TASK_DEFAULTS: dict[str, dict] = {
    "PandaPickCube": {"overrides": ("reward_shaping=true", "rotation_actions=false", "object_state=position"),
                      "agent": {"grasp_critic": True}},
}


def apply_task_defaults(cfg: "TrainConfig") -> "TrainConfig":
    """``cfg`` with its task's entry of TASK_DEFAULTS merged in (explicit overrides of the same key win)."""
    defaults = TASK_DEFAULTS.get(cfg.task) if cfg.task_defaults else None
    if not defaults:
        return cfg
    given = EnvConfig(task=cfg.task, overrides=cfg.overrides).override_dict()
    extra = tuple(item for item in defaults.get("overrides", ()) if item.partition("=")[0] not in given)
    agent = dataclasses.replace(cfg.agent, **defaults.get("agent", {}))
    merged = EnvConfig(task=cfg.task, overrides=cfg.overrides + extra).override_dict()
    if merged.get("reward_shaping") is True and "shaping_discount" not in merged:
        extra += (f"shaping_discount={agent.discount}",)  # shaping with the agent's discount keeps its optimal policy
    return dataclasses.replace(cfg, overrides=cfg.overrides + extra, agent=agent)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """``serl train <task>``: scripted demos, learner and actor on this machine."""

    task: Annotated[str, tyro.conf.Positional] = "PandaPickCube"
    """Task name (PandaPickCube, PandaPegInsertion, …)."""
    pixels: bool = False
    """Train from the task's cameras instead of state."""
    overrides: tuple[str, ...] = ()
    """Task config overrides as key=value."""
    task_module: str | None = None
    """Module or .py file that registers extra tasks (imported by every process)."""
    demos: Path | None = None
    """Demo file; None records num_demos scripted demos into the run directory."""
    num_demos: int = 20
    demo_noise: float = 0.1
    """Std of the scripted expert's action noise in the recorded demos (action units)."""
    env_steps: int = 10_000
    """Env steps of the whole run (a --resume run takes the steps still left)."""
    run: RunConfig = RunConfig()
    net: NetConfig = NetConfig(port=0, weights_port=0)
    """Ports 0 = pick free ports."""
    agent: SACConfig = SACConfig.rlpd_with_demo_bc()
    batch_size: int = 256
    min_online_steps: int = 200
    publish_every: int = 10
    checkpoint_every: int = 2_000
    random_steps: int = 0
    grasp_penalty: float = 0.0
    """Cost of a step that changes the gripper, paid by the grasp critic only (HIL-SERL: 0.02)."""
    max_lag: int = 10
    """The actor waits while the learner owes this many updates (keeps the update-to-data ratio in sim)."""
    lag_patience_s: float = 300.0
    """Longest such wait: the twin loses nothing by waiting, so a slow machine learns as a fast one does."""
    robot_server: bool = False
    """Start a twin robot server and let the actor use it over HTTP (default: twin in the actor's process)."""
    resume: bool = False
    """Continue the run named by --run.name (or the task's latest run) from its checkpoint."""
    eval_episodes: int = 0
    """Deterministic evaluation episodes after training (0 = none)."""
    display: bool = True
    """Live progress display (rich); plain lines when stdout is not a terminal."""
    task_defaults: bool = True
    """Merge the task's tuned settings from TASK_DEFAULTS (PandaPickCube: shaped reward, xyz actions, grasp critic)."""
    console: ConsoleConfig = ConsoleConfig()
    """The training console the actor serves: watch, pause, mark episodes, take over from the browser."""

    def __post_init__(self):
        if self.env_steps <= 0:
            raise ValueError(f"env_steps: must be positive, got {self.env_steps}")
        if self.num_demos < 0:
            raise ValueError(f"num_demos: must be >= 0, got {self.num_demos}")
        if not self.demo_noise >= 0:
            raise ValueError(f"demo_noise: must be >= 0, got {self.demo_noise}")
        if self.robot_server and (self.pixels or self.task_module):
            raise ValueError("robot_server: the served twin takes a registered state task only (no --pixels, --task-module)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def resolve_run_dir(run: RunConfig, task: str, resume: bool, must_exist: bool = False) -> tuple[RunConfig, Path]:
    """Fill in the run name (latest run when resuming, else a timestamp) and return the run directory;
    ``must_exist``: ValueError when it holds no run yet."""
    name = run.name
    run_name_given = bool(name)
    if not name:
        name = (latest_run(run.root, task) if resume else None) or default_run_name()
    run = dataclasses.replace(run, name=name)
    if must_exist and not (run.directory(task) / "config.json").exists():
        where = run.directory(task) if run_name_given else run.directory(task).parent
        raise ValueError(f"--resume: no run of {task} to continue in {where}")
    return run, run.directory(task)


def learner(cfg: LearnerConfig) -> int:
    """``serl learner``."""
    run, run_dir = resolve_run_dir(cfg.run, cfg.env.task, cfg.resume, must_exist=cfg.resume)
    learner_process.main_with_signals(dataclasses.replace(cfg, run=run), run_dir)
    return 0


def actor(cfg: ActorConfig) -> int:
    """``serl actor``."""
    run, run_dir = resolve_run_dir(cfg.run, cfg.env.task, resume=True)
    try:
        actor_process.main_with_signals(dataclasses.replace(cfg, run=run), run_dir)
    finally:
        write_summary(run_dir, "actor")
    return 0


def write_summary(run_dir: Path, who: str) -> Path | None:
    """The run's learning curves as ``summary.png`` (``serl.console.curves``), and a line saying where."""
    try:
        from serl.console.curves import write_summary_png
    except ImportError:
        return None
    try:
        path = write_summary_png(run_dir)
    except (OSError, ValueError, ImportError) as err:  # matplotlib missing, a full disk: the run is done anyway
        print(f"[{who}] no summary plot: {err}", flush=True)
        return None
    if path is not None:
        print(f"[{who}] learning curves: {path}", flush=True)
    return path


def _record_demos(cfg: TrainConfig, env: EnvConfig, path: Path) -> Path:
    if env.task_module:
        import_task_module(env.task_module)
    record_demos(RecordDemosConfig(task=cfg.task, n=cfg.num_demos, teleop="scripted", out=path, seed=cfg.run.seed,
                                   noise=cfg.demo_noise, pixels=cfg.pixels, overrides=env.overrides, display=False))
    return path


class Children:
    """The processes ``serl train`` started; stopped in reverse dependency order."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        log.close()
        self.procs[name] = proc
        return proc

    def stop(self, name: str, timeout: float = 60.0, hurry=lambda: False) -> int | None:
        """SIGINT, then SIGTERM, then SIGKILL, each after a grace period (cut short once ``hurry()``);
        returns the exit code."""
        proc = self.procs.get(name)
        if proc is None:
            return None
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            if proc.poll() is not None:
                break
            proc.send_signal(sig)
            deadline = time.monotonic() + wait
            while proc.poll() is None and time.monotonic() < deadline and not (hurry() and sig != signal.SIGKILL):
                time.sleep(0.05)
        return proc.poll()

    def stop_all(self) -> None:
        for name in ("actor", "learner", "robot_server"):
            self.stop(name)


def _launch(kind: str, config_path: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "serl.runtime.launch", kind, str(config_path), str(run_dir)]


def train(cfg: TrainConfig) -> int:
    """``serl train``: returns 0 when training ran to the end, 130 when interrupted, 1 when a child failed.

    A wrong task or config raises ValueError before anything is written.
    """
    cfg = apply_task_defaults(cfg)
    env = EnvConfig(task=cfg.task, pixels=cfg.pixels, overrides=cfg.overrides, task_module=cfg.task_module,
                    grasp_penalty=cfg.grasp_penalty)
    check_task(env)
    if cfg.demos is not None and not cfg.demos.exists():
        raise ValueError(f"demos: {cfg.demos} not found")
    run, run_dir = resolve_run_dir(cfg.run, cfg.task, cfg.resume, must_exist=cfg.resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    net = dataclasses.replace(
        cfg.net, port=cfg.net.port or free_port(), weights_port=cfg.net.weights_port or free_port()
    )
    write_config(run_dir, dataclasses.replace(cfg, run=run, net=net), "train_config.json")

    demos = cfg.demos
    if demos is None and cfg.num_demos > 0 and cfg.task.startswith("gym:"):
        print("[train] gym: tasks have no scripted expert; training without demos (--demos FILE to give some)",
              flush=True)
    elif demos is None and cfg.num_demos > 0:
        demos = run_dir / "demos.h5"
        if not demos.exists():
            print(f"[train] recording {cfg.num_demos} scripted demos → {demos}", flush=True)
            partial = run_dir / "demos.partial.h5"
            partial.unlink(missing_ok=True)
            try:
                _record_demos(cfg, env, partial)
            except KeyboardInterrupt:
                print("[train] interrupted while recording demos; no checkpoint (training had not started)", flush=True)
                return 130
            os.replace(partial, demos)  # a later --resume never picks up a half-recorded demo set

    signals = []

    def on_signal(*_):
        signals.append(time.monotonic())
        if len(signals) == 2:
            print("[train] second interrupt: stopping at once, without waiting for a checkpoint", flush=True)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    children = Children(run_dir / "logs")
    try:
        actor_env = env
        if cfg.robot_server:
            port = free_port()
            children.start("robot_server", _robot_server_args(cfg, port))
            actor_env = dataclasses.replace(env, robot_url=f"http://127.0.0.1:{port}")
            _wait_http(f"http://127.0.0.1:{port}", children.procs["robot_server"])

        learner_cfg = LearnerConfig(
            env=env, run=run, net=net, agent=cfg.agent, demos=demos, batch_size=cfg.batch_size,
            min_online_steps=cfg.min_online_steps, publish_every=cfg.publish_every,
            checkpoint_every=cfg.checkpoint_every, max_env_steps=0, resume=cfg.resume, quiet=True,
        )
        actor_cfg = ActorConfig(
            env=actor_env, run=run, net=net, agent=cfg.agent, random_steps=cfg.random_steps,
            max_env_steps=cfg.env_steps, max_lag=cfg.max_lag, lag_patience_s=cfg.lag_patience_s, resume=cfg.resume, quiet=True, console=cfg.console,
        )
        launch_dir = run_dir / "launch"
        launch_dir.mkdir(exist_ok=True)
        (launch_dir / "learner.json").write_text(json.dumps(to_jsonable(learner_cfg)))
        (launch_dir / "actor.json").write_text(json.dumps(to_jsonable(actor_cfg)))
        for name in ("learner.json", "actor.json"):
            (run_dir / "status" / name).unlink(missing_ok=True)
        learner_proc = children.start("learner", _launch("learner", launch_dir / "learner.json", run_dir))
        actor_proc = children.start("actor", _launch("actor", launch_dir / "actor.json", run_dir))
        (launch_dir / "pids.json").write_text(json.dumps({name: p.pid for name, p in children.procs.items()}))

        progress = TrainProgress(run_dir, cfg.env_steps, live=cfg.display and sys.stdout.isatty(), pixels=cfg.pixels,
                                 console_token=cfg.console.token or os.environ.get(TOKEN_ENV))
        try:
            while not signals:
                progress.update()
                if actor_proc.poll() is not None or learner_proc.poll() is not None:
                    break
                time.sleep(0.25)
            progress.update()
        finally:
            progress.close()

        failed = [name for name, proc in children.procs.items() if proc.poll() not in (None, 0)]
        compiling = bool(read_status(run_dir / "status" / "learner.json").get("phase")) and learner_proc.poll() is None
        # a compiling learner saves once the compile returns; killing it after a minute would lose the checkpoint
        grace = COMPILE_GRACE_S if compiling else 60.0
        if signals:
            wait = (f"it is compiling its first update, minutes on a CPU with --pixels: waiting up to {grace / 60:.0f} "
                    "min" if compiling else "up to a minute")
            print(f"[train] stopping: the actor, then the learner, which finishes its update and writes a checkpoint "
                  f"({wait}; Ctrl-C again to stop at once without one)", flush=True)
        hurry = lambda: len(signals) > 1  # noqa: E731
        children.stop("actor", hurry=hurry)
        learner_code = children.stop("learner", timeout=grace, hurry=hurry)
        children.stop("robot_server", hurry=hurry)
        print(f"[train] {checkpoint_report(run_dir, learner_code)}", flush=True)
        write_summary(run_dir, "train")
        if signals:
            then = "`--resume` continues this run" if checkpoint_steps_on_disk(run_dir) else "nothing to resume from yet"
            print(f"[train] interrupted; logs in {run_dir / 'logs'}; {then}", flush=True)
            return 130
        if failed:
            print(f"[train] {', '.join(failed)} failed; see {run_dir / 'logs'}", file=sys.stderr, flush=True)
            return 1
        print(f"[train] done; TensorBoard logs in {run_dir / 'tb'}", flush=True)
        if cfg.eval_episodes:
            evaluate(EvalConfig(run_dir=run_dir, episodes=cfg.eval_episodes))
        return 0
    finally:
        children.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def checkpoint_steps_on_disk(run_dir: Path) -> list[int]:
    """Env steps of the complete checkpoints in ``run_dir`` (orbax's committed step folders; the data is in the logs)."""
    agent_dir = run_dir / "checkpoints" / "agent"
    return sorted(int(p.name) for p in agent_dir.iterdir() if p.name.isdigit()) if agent_dir.is_dir() else []


def checkpoint_report(run_dir: Path, learner_code: int | None) -> str:
    """One line on the run's checkpoint after the learner stopped, from its status and the files on disk."""
    status = read_status(run_dir / "status" / "learner.json")
    on_disk = checkpoint_steps_on_disk(run_dir)
    latest = f"; the latest on disk is env step {on_disk[-1]}" if on_disk else "; none is on disk"
    if not status.get("done"):
        if learner_code is not None and learner_code > 0:
            return f"no checkpoint written: the learner failed (exit {learner_code}; see logs/learner.log){latest}"
        why = "it was compiling its first update, so no update finished yet" if status.get("phase") else \
            "it did not stop in time"
        return f"no checkpoint written: the learner was killed (exit {learner_code}) before saving: {why}{latest}"
    step, note = status.get("checkpoint_step"), status.get("checkpoint_note", "")
    if step is not None and step not in on_disk:
        return f"no checkpoint written: the learner reported env step {step}, but its files are missing{latest}"
    return f"{note}{latest if step is None else ''}"


def _robot_server_args(cfg: TrainConfig, port: int) -> list[str]:
    # a lockstep twin: the actor's env advances simulated time, so training runs faster than real time
    from serl.cli.serve import SERVE_COMMAND

    args = [*SERVE_COMMAND, "--backend", "twin", "--task", cfg.task, "--port", str(port), "--lockstep",
            "--log-level", "warning"]
    return args + (["--task-module", cfg.task_module] if cfg.task_module else [])


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"robot server exited with code {proc.returncode} before answering")
        try:
            httpx.get(f"{url}/health", timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError(f"robot server at {url} did not answer within {timeout:.0f} s")
