"""``serl train``, ``serl learner`` and ``serl actor``.

``serl train <task>`` records scripted demos when none are given, starts the learner and one actor (or, with
``--actors N``, N actors) as separate processes (optionally a twin robot server per actor, over HTTP), shows one
progress display for all of them, and on Ctrl-C stops them in order: actors, then learner (which checkpoints),
then robot servers.
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
from serl.cli.record_demos import RecordDemosConfig, record_cycle_demos, record_demos
from serl.envs.task_cycles import TaskCycle, get_cycle, is_cycle
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
    "PandaRelocateFwBw": {"overrides": ("reward_shaping=true", "rotation_actions=false", "object_state=position"),
                          "agent": {"grasp_critic": True}},
    # two arms, 2 x (xyz, gripper): one grasp critic over both hands (3 x 3 joint gripper actions); two critic steps
    # per env step, so that a 2-core CPU trains three seeds at once. Its training episodes need centimetre
    # precision at two grasps: noisier demos show recoveries, cloning their likelihood and a capped spread keep
    # the policy near the demos, and the actor samples nearer still to the policy's mean (docs/env.md compares them)
    "PandaHandover": {"overrides": ("reward_shaping=true",),
                      "agent": {"grasp_critic": True, "gripper_indices": (3, 7), "utd_ratio": 2,
                                "bc_likelihood": True, "policy_std_max": 0.3, "explore_std_max": 0.1},
                      "train": {"demo_noise": 0.3}},
}


# What --task-defaults adds to every --pixels run: 64² cameras into a frozen small conv net whose features the learner
# caches (computed once per stored frame), a 64-wide head per camera and batches of 128, which a 2-core CPU updates
# at about the rate of the state agent (docs/pixels.md has the measurements).
PIXEL_DEFAULTS: dict = {"overrides": ("camera_size=64",),
                        "agent": {"encoder": "small", "freeze_backbone": True, "encoder_latent_dim": 64},
                        "train": {"batch_size": 128}}


def apply_task_defaults(cfg: "TrainConfig") -> "TrainConfig":
    """``cfg`` with its task's entry of TASK_DEFAULTS (and PIXEL_DEFAULTS with --pixels) merged in: overrides of
    a key given explicitly win, and so do agent and train settings changed from their defaults."""
    if not cfg.task_defaults:
        return cfg
    entries = [TASK_DEFAULTS.get(cfg.task, {})] + ([PIXEL_DEFAULTS] if cfg.pixels else [])
    defaults = {"overrides": sum((tuple(e.get("overrides", ())) for e in entries), ()),
                "agent": {k: v for e in entries for k, v in e.get("agent", {}).items()},
                "train": {k: v for e in entries for k, v in e.get("train", {}).items()}}
    if not any(defaults.values()):
        return cfg
    plain = TrainConfig()
    cfg = dataclasses.replace(cfg, **{k: v for k, v in defaults["train"].items() if getattr(cfg, k) == getattr(plain, k)})
    given = EnvConfig(task=cfg.task, overrides=cfg.overrides).override_dict()
    extra = tuple(item for item in defaults["overrides"] if item.partition("=")[0] not in given)
    agent = dataclasses.replace(cfg.agent, **{k: v for k, v in defaults["agent"].items()
                                              if getattr(cfg.agent, k) == getattr(plain.agent, k)})
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
    """Start a twin robot server and let the actor use it over HTTP (default: twin in the actor's process); with
    several actors, one server per actor."""
    actors: int = 1
    """Actor processes feeding the one learner: ids 1..N, seeds run.seed + 0..N-1, --env-steps split among them,
    the console page served by actor 1 only (1 = one actor as `serl actor`: no id)."""
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
        if self.actors < 1:
            raise ValueError(f"actors: must be >= 1, got {self.actors}")
        if self.env_steps < self.actors:
            raise ValueError(f"env_steps: {self.actors} actors need at least one env step each, got {self.env_steps}")
        if self.resume and self.actors > 1:
            raise ValueError("actors: --resume runs one actor (the learner counts env steps over all actors, and an "
                             "actor resumes from that total); resume with --actors 1")
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


def actor_ids(count: int) -> list[str]:
    """The ids of ``count`` actors: "" for one (named ``<host>-<pid>`` at the learner), "1".."N" for several."""
    return [""] if count == 1 else [str(i) for i in range(1, count + 1)]


def split_budget(total: int, parts: int) -> list[int]:
    """``total`` env steps over ``parts`` actors, the remainder to the first ones."""
    share, extra = divmod(total, parts)
    return [share + (i < extra) for i in range(parts)]


def child_name(kind: str, actor_id: str) -> str:
    """A child's name, its log's (``logs/<name>.log``) and its launch file's: ``actor``, ``actor-2``, …"""
    return f"{kind}-{actor_id}" if actor_id else kind


class Children:
    """The processes ``serl train`` started; stopped in dependency order: actors, learner, robot servers."""

    STOP_ORDER = ("actor", "learner", "robot_server")

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

    def launch(self, name: str, cfg, run_dir: Path) -> subprocess.Popen:
        """Write ``cfg`` to ``launch/<name>.json`` and start it (``serl.runtime.launch``) as child ``name``."""
        kind = "learner" if isinstance(cfg, LearnerConfig) else "actor"
        path = run_dir / "launch" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(to_jsonable(cfg)))
        return self.start(name, _launch(kind, path, run_dir))

    def named(self, kind: str) -> list[str]:
        """The children of one kind ("actor" holds ``actor`` and ``actor-<id>``), in start order."""
        return [name for name in self.procs if name == kind or name.startswith(f"{kind}-")]

    def stop(self, *names: str, timeout: float = 60.0, hurry=lambda: False) -> int | None:
        """SIGINT, then SIGTERM, then SIGKILL to all ``names`` together, each after a grace period (cut short once
        ``hurry()``); returns the exit code of the last one."""
        procs = [self.procs[name] for name in names if name in self.procs]
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            running = [proc for proc in procs if proc.poll() is None]
            if not running:
                break
            for proc in running:
                proc.send_signal(sig)
            deadline = time.monotonic() + wait
            while (any(proc.poll() is None for proc in running) and time.monotonic() < deadline
                   and not (hurry() and sig != signal.SIGKILL)):
                time.sleep(0.05)
        return procs[-1].poll() if procs else None

    def stop_all(self) -> None:
        for kind in self.STOP_ORDER:
            self.stop(*self.named(kind))

    def __enter__(self) -> "Children":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()


class Interrupts:
    """SIGINT and SIGTERM while ``serl train`` runs its children: true after the first (stop them in order, with
    checkpoints); ``hurry()`` after a second (stop at once)."""

    def __enter__(self) -> "Interrupts":
        self.times: list[float] = []
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, *_) -> None:
        self.times.append(time.monotonic())
        if len(self.times) == 2:
            print("[train] second interrupt: stopping at once, without waiting for a checkpoint", flush=True)

    def __bool__(self) -> bool:
        return bool(self.times)

    def hurry(self) -> bool:
        return len(self.times) > 1


def outcome(run_dir: Path, interrupted: bool, failed: list[str], then: str, done: str) -> int:
    """The last line of ``serl train`` and its exit code: 130 interrupted (``then``: what a restart does), 1 when a
    child failed, 0 done."""
    if interrupted:
        print(f"[train] interrupted; logs in {run_dir / 'logs'}; {then}", flush=True)
        return 130
    if failed:
        print(f"[train] {', '.join(failed)} failed; see {run_dir / 'logs'}", file=sys.stderr, flush=True)
        return 1
    print(f"[train] done; {done}", flush=True)
    return 0


def _launch(kind: str, config_path: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "serl.runtime.launch", kind, str(config_path), str(run_dir)]


def record_demos_for_run(cfg: TrainConfig, env: EnvConfig, run_dir: Path) -> Path | None:
    """The run's demo file: ``cfg.demos``, or ``num_demos`` scripted demos recorded once into ``run_dir``;
    KeyboardInterrupt while recording leaves no half-recorded file."""
    if cfg.demos is not None or cfg.num_demos == 0:
        return cfg.demos
    if cfg.task.startswith("gym:"):
        print("[train] gym: tasks have no scripted expert; training without demos (--demos FILE to give some)",
              flush=True)
        return None
    demos = run_dir / "demos.h5"
    if not demos.exists():
        print(f"[train] recording {cfg.num_demos} scripted demos → {demos}", flush=True)
        partial = run_dir / "demos.partial.h5"
        partial.unlink(missing_ok=True)
        _record_demos(cfg, env, partial)
        os.replace(partial, demos)  # a later --resume never picks up a half-recorded demo set
    return demos


def learner_config(cfg: TrainConfig, env: EnvConfig, run: RunConfig, net: NetConfig, demos: Path | None) -> LearnerConfig:
    """The learner ``serl train`` starts: quiet, no step limit of its own (the actors have the budget)."""
    return LearnerConfig(
        env=env, run=run, net=net, agent=cfg.agent, demos=demos, batch_size=cfg.batch_size,
        min_online_steps=cfg.min_online_steps, publish_every=cfg.publish_every,
        checkpoint_every=cfg.checkpoint_every, max_env_steps=0, resume=cfg.resume, quiet=True,
    )


def actor_configs(cfg: TrainConfig, envs: list[EnvConfig], run: RunConfig, net: NetConfig) -> list[ActorConfig]:
    """One actor per env in ``envs``: ids from ``actor_ids``, seeds ``run.seed + i``, the budget split, and the
    console page served by the first one only (so N pages never collide on one port)."""
    ids, budgets = actor_ids(len(envs)), split_budget(cfg.env_steps, len(envs))
    return [
        ActorConfig(
            env=env, run=dataclasses.replace(run, seed=run.seed + i), net=net, agent=cfg.agent,
            random_steps=cfg.random_steps, max_env_steps=budget, max_lag=cfg.max_lag,
            lag_patience_s=cfg.lag_patience_s, resume=cfg.resume, quiet=True, actor_id=actor_id,
            console=cfg.console if i == 0 else dataclasses.replace(cfg.console, enabled=False),
        )
        for i, (env, actor_id, budget) in enumerate(zip(envs, ids, budgets))
    ]


def start_robot_servers(cfg: TrainConfig, env: EnvConfig, children: Children) -> list[EnvConfig]:
    """Per actor, its env: with ``--robot-server`` one served lockstep twin each (``robot_server[-<id>]``), else
    the twin in the actor's own process."""
    if not cfg.robot_server:
        return [env] * cfg.actors
    envs = []
    for actor_id in actor_ids(cfg.actors):
        name, port = child_name("robot_server", actor_id), free_port()
        proc = children.start(name, _robot_server_args(cfg, port))
        _wait_http(f"http://127.0.0.1:{port}", proc)
        envs.append(dataclasses.replace(env, robot_url=f"http://127.0.0.1:{port}"))
    return envs


def watch_children(children: Children, progress: TrainProgress, signals: "Interrupts") -> None:
    """Update the display until every actor exited, the learner exited or a signal came; an actor that fails
    while others act on is reported in one line and the others go on."""
    actors, learner_proc = children.named("actor"), children.procs["learner"]
    reported: set[str] = set()
    try:
        while not signals:
            progress.update()
            if learner_proc.poll() is not None:
                break
            ended = [name for name in actors if children.procs[name].poll() is not None]
            for name in ended:
                code = children.procs[name].returncode
                if name not in reported and code != 0 and len(actors) > 1:
                    acting = len(actors) - len(ended)
                    progress.say(f"[train] {name} exited with code {code} ({acting} of {len(actors)} actors act on); "
                                 f"see {children.log_dir / f'{name}.log'}")
                reported.add(name)
            if len(ended) == len(actors):
                break
            time.sleep(0.25)
        progress.update()
    finally:
        progress.close()


def train(cfg: TrainConfig) -> int:
    """``serl train``: returns 0 when training ran to the end, 130 when interrupted, 1 when a child failed.

    A wrong task or config raises ValueError before anything is written. A task cycle (``PandaRelocateFwBw``)
    trains its tasks in turn without scene resets (``train_cycle``).
    """
    if cfg.task_module:  # it may register the task cycle named
        try:
            import_task_module(cfg.task_module)
        except ModuleNotFoundError as err:
            raise ValueError(f"task_module: {err}") from None
    if is_cycle(cfg.task):
        return train_cycle(cfg)
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
    try:
        demos = record_demos_for_run(cfg, env, run_dir)
    except KeyboardInterrupt:
        print("[train] interrupted while recording demos; no checkpoint (training had not started)", flush=True)
        return 130

    with Interrupts() as signals, Children(run_dir / "logs") as children:
        actor_envs = start_robot_servers(cfg, env, children)
        learner_cfg = learner_config(cfg, env, run, net, demos)
        actor_cfgs = actor_configs(cfg, actor_envs, run, net)
        status_dir = run_dir / "status"
        for path in [status_dir / "learner.json", *status_dir.glob("actor*.json")]:
            path.unlink(missing_ok=True)  # a resumed run's display starts from this run's figures
        learner_proc = children.launch("learner", learner_cfg, run_dir)
        for actor_cfg in actor_cfgs:
            children.launch(child_name("actor", actor_cfg.actor_id), actor_cfg, run_dir)
        (run_dir / "launch" / "pids.json").write_text(json.dumps({name: p.pid for name, p in children.procs.items()}))

        progress = TrainProgress(run_dir, cfg.env_steps, live=cfg.display and sys.stdout.isatty(), pixels=cfg.pixels,
                                 console_token=cfg.console.token or os.environ.get(TOKEN_ENV), actors=cfg.actors)
        watch_children(children, progress, signals)

        failed = [name for name, proc in children.procs.items() if proc.poll() not in (None, 0)]
        compiling = bool(read_status(status_dir / "learner.json").get("phase")) and learner_proc.poll() is None
        # a compiling learner saves once the compile returns; killing it after a minute would lose the checkpoint
        grace = COMPILE_GRACE_S if compiling else 60.0
        if signals:
            wait = (f"it is compiling its first update, minutes on a CPU with --pixels: waiting up to {grace / 60:.0f} "
                    "min" if compiling else "up to a minute")
            who = "the actor" if cfg.actors == 1 else "the actors"
            print(f"[train] stopping: {who}, then the learner, which finishes its update and writes a checkpoint "
                  f"({wait}; Ctrl-C again to stop at once without one)", flush=True)
        children.stop(*children.named("actor"), hurry=signals.hurry)
        learner_code = children.stop("learner", timeout=grace, hurry=signals.hurry)
        children.stop(*children.named("robot_server"), hurry=signals.hurry)
        print(f"[train] {checkpoint_report(run_dir, learner_code)}", flush=True)
        write_summary(run_dir, "train")
        then = "`--resume` continues this run" if checkpoint_steps_on_disk(run_dir) else "nothing to resume from yet"
        code = outcome(run_dir, bool(signals), failed, then, f"TensorBoard logs in {run_dir / 'tb'}")
    if code == 0 and cfg.eval_episodes:
        evaluate(EvalConfig(run_dir=run_dir, episodes=cfg.eval_episodes))
    return code


# ----------------------------------------------------------------------------- task cycles
# One actor runs the cycle's tasks in turn on one twin, never resetting the scene but for counted fallbacks; each
# task has its own learner process. One learner per task rather than one for all: each task is then an ordinary
# run in RUN/<task>/ (its buffers, demos, checkpoints, --resume, serl eval), the learner has no notion of cycles,
# and since the actor feeds one task at a time only that task's learner updates, so the CPU cost is one learner's.


def train_cycle(cfg: TrainConfig) -> int:
    """As ``serl train`` for one task: 0 when the budget (env steps over all tasks) is spent, 130 when
    interrupted, 1 when a child failed."""
    cycle = get_cycle(cfg.task)
    if cfg.actors != 1:
        raise ValueError(f"actors: the tasks of {cycle.name} share one robot, so one actor runs them")
    if cfg.robot_server:
        raise ValueError(f"robot_server: {cycle.name} runs its twin in the actor's process")
    if cfg.demos is not None:
        raise ValueError(f"demos: {cycle.name} takes one demo file per task, RUN/<task>/demos.h5 (recorded when "
                         "missing)")
    cfg = apply_task_defaults(cfg)
    template = EnvConfig(task=cycle.name, pixels=cfg.pixels, overrides=cfg.overrides, task_module=cfg.task_module,
                         grasp_penalty=cfg.grasp_penalty)
    envs = {task: dataclasses.replace(template, task=task) for task in cycle.tasks}
    for env in envs.values():
        check_task(env)
    run, run_dir = _cycle_run_dir(cfg, cycle)
    run_dir.mkdir(parents=True, exist_ok=True)
    nets = {task: dataclasses.replace(cfg.net, port=free_port(), weights_port=free_port()) for task in cycle.tasks}
    write_config(run_dir, dataclasses.replace(cfg, run=run), "train_config.json",
                 extra={"cycle": {task: dataclasses.asdict(net) for task, net in nets.items()}})
    try:
        demos = _cycle_demos(cfg, cycle.name, {task: run_dir / task for task in cycle.tasks})
    except KeyboardInterrupt:
        print("[train] interrupted while recording demos; no checkpoint (training had not started)", flush=True)
        return 130

    with Interrupts() as signals, Children(run_dir / "logs") as children:
        for task in cycle.tasks:
            for name in ("learner.json", "actor.json"):
                (run_dir / task / "status" / name).unlink(missing_ok=True)
            children.launch(f"learner-{task}", learner_config(cfg, envs[task], run, nets[task], demos.get(task)),
                            run_dir / task)
        actor = children.launch("actor", ActorConfig(
            env=template, run=run, net=nets[cycle.tasks[0]], agent=cfg.agent, cycle=cycle.name,
            cycle_ports=tuple(port for task in cycle.tasks for port in (nets[task].port, nets[task].weights_port)),
            random_steps=cfg.random_steps,
            max_env_steps=cfg.env_steps, max_lag=cfg.max_lag, lag_patience_s=cfg.lag_patience_s,
            resume=cfg.resume, quiet=True, console=cfg.console,
        ), run_dir)
        progress = CycleProgress(run_dir, cycle.tasks, cfg.env_steps,
                                 console_token=cfg.console.token or os.environ.get(TOKEN_ENV))
        learners = children.named("learner")
        while not signals and actor.poll() is None and all(children.procs[n].poll() is None for n in learners):
            progress.update()
            time.sleep(0.5)
        progress.update(force=True)
        failed = [name for name, proc in children.procs.items() if proc.poll() not in (None, 0)]
        if signals:
            print("[train] stopping: the actor, then the learners, which write their checkpoints (Ctrl-C again to stop "
                  "at once without them)", flush=True)
        children.stop("actor", hurry=signals.hurry)
        for task in cycle.tasks:
            code = children.stop(f"learner-{task}", hurry=signals.hurry)
            print(f"[train] {task}: {checkpoint_report(run_dir / task, code)}", flush=True)
            write_summary(run_dir / task, "train")
        return outcome(run_dir, bool(signals), failed, "`--resume` continues this run",
                       f"each task's run is in {run_dir}/<task>/")


def _cycle_run_dir(cfg: TrainConfig, cycle: TaskCycle) -> tuple[RunConfig, Path]:
    """The cycle's run (``RUN/<cycle>/<name>/``, its tasks' runs inside): named, the latest with --resume, or new."""
    name = cfg.run.name or (latest_run(cfg.run.root, cycle.name, "train_config.json") if cfg.resume else None)
    run = dataclasses.replace(cfg.run, name=name or default_run_name())
    run_dir = run.directory(cycle.name)
    if cfg.resume:
        missing = [task for task in cycle.tasks if not (run_dir / task / "config.json").exists()]
        if missing:
            where = run_dir if name else run_dir.parent
            raise ValueError(f"--resume: no run of {cycle.name} to continue in {where} (missing: {', '.join(missing)})")
    return run, run_dir


def _cycle_demos(cfg: TrainConfig, cycle: str, lane_dirs: dict[str, Path]) -> dict[str, Path]:
    """Per task, ``RUN/<task>/demos.h5``: ``num_demos`` scripted demos each, recorded in turn when missing."""
    if cfg.num_demos == 0:
        return {}
    paths = {task: directory / "demos.h5" for task, directory in lane_dirs.items()}
    if all(path.exists() for path in paths.values()):
        return paths
    partial = {task: directory / "demos.partial.h5" for task, directory in lane_dirs.items()}
    for task, path in partial.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
    print(f"[train] recording {cfg.num_demos} scripted demos per task, in turn → {', '.join(map(str, paths.values()))}",
          flush=True)
    kept = record_cycle_demos(cycle, partial, cfg.num_demos, seed=cfg.run.seed, noise=cfg.demo_noise,
                              pixels=cfg.pixels, overrides=cfg.overrides)
    short = {task: count for task, count in kept.items() if count < cfg.num_demos}
    if short:
        raise RuntimeError(f"the scripted expert kept too few demos: {short} of {cfg.num_demos} each")
    for task, path in partial.items():
        os.replace(path, paths[task])  # a later --resume never picks up a half-recorded demo set
    return paths


class CycleProgress:
    """One line every few seconds: per task its env steps, episodes, success (last 20) and learner updates, and
    the cycle's fallbacks."""

    EVERY_S = 5.0

    def __init__(self, run_dir: Path, tasks: tuple[str, ...], total: int, console_token: str | None = None):
        self.run_dir = run_dir
        self.tasks = tasks
        self.total = total
        self.console_token = console_token
        self.console_said = False
        self.printed = 0.0
        self.last_line = ""

    def update(self, force: bool = False) -> None:
        parts, steps = [], 0
        for task in self.tasks:
            actor = read_status(self.run_dir / task / "status" / "actor.json")
            learner = read_status(self.run_dir / task / "status" / "learner.json")
            steps += actor.get("env_steps", 0)
            if actor.get("console") and not self.console_said:
                self.console_said = True
                token = f"?token={self.console_token}" if self.console_token else ""
                print(f"console: {actor['console']}{token}", flush=True)
            parts.append(f"{task}: steps={actor.get('env_steps', 0)} episodes={actor.get('episodes', 0)} "
                         f"success20={actor.get('success_rate', 0.0):.0%} updates={learner.get('updates', 0)}"
                         + (f" ({actor['phase']})" if actor.get("phase") else ""))
        cycle = read_status(self.run_dir / "status" / "cycle.json")
        line = f"[train] {steps}/{self.total} env steps | " + " | ".join(parts) + \
            f" | fallbacks={cycle.get('fallbacks', 0)}"
        if line != self.last_line and (force or time.monotonic() - self.printed > self.EVERY_S):
            self.printed, self.last_line = time.monotonic(), line
            print(line, flush=True)


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
