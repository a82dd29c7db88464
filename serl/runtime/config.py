"""Typed configs of the runtime processes (learner, actor, train, eval) and the run directory layout.

A run lives in ``<root>/<task>/<name>/``: ``config.json`` (resolved config), ``checkpoints/``, ``tb/``
(TensorBoard events of learner and actor), ``status/`` (small JSON files the progress display reads),
``episodes.jsonl`` (the actor's episodes), and with ``serl train`` ``launch/`` (its children's configs) and ``logs/``.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import types
import typing
from pathlib import Path
from typing import Literal, Mapping

from serl.agents.sac import SACConfig
from serl.console.server import ConsoleConfig
from serl.runtime.env_config import EnvConfig
from serl.runtime.logging import LoggerKind


@dataclasses.dataclass(frozen=True)
class NetConfig:
    """Where the learner listens / the actor connects."""

    host: str = "127.0.0.1"
    """Learner address (actor) or bind address (learner; 0.0.0.0 for a second machine)."""
    port: int = 5588
    """Transitions, handshake and heartbeats (ZeroMQ ROUTER)."""
    weights_port: int = 5589
    """Weight broadcast (ZeroMQ PUB)."""
    keys: Path | None = None
    """CURVE keys from `serl keys` (learner: DIR/learner, actor: DIR/NAME); needed to listen beyond loopback."""
    insecure: bool = False
    """Learner: listen beyond loopback without keys (anyone reaching the ports can send data and read weights)."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Where the run writes and what it is called."""

    root: Path = Path("runs")
    name: str = ""
    """Run name; empty = a timestamp (``serl train``) or the latest run of the task (learner --resume)."""
    seed: int = 0
    logger: LoggerKind = "tensorboard"

    def directory(self, task: str) -> Path:
        if not self.name:
            raise ValueError("run.name: empty (the caller should resolve it first)")
        return self.root / task.replace(":", "_").replace("/", "_") / self.name


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """``serl learner``: replay buffers + SAC updates, fed by actors over the network."""

    env: EnvConfig = EnvConfig()
    run: RunConfig = RunConfig()
    net: NetConfig = NetConfig()
    agent: SACConfig = SACConfig()
    demos: Path | None = None
    """HDF5 demo file (serl record-demos) loaded into the demo buffer."""
    batch_size: int = 256
    """Minibatch per critic step; one agent.update per received env step gets agent.utd_ratio × batch_size rows."""
    demo_ratio: float = 0.5
    """Share of each batch drawn from the demo buffer (when it holds data)."""
    min_online_steps: int = 100
    """Online transitions received before updates start."""
    buffer_capacity: int = 200_000
    publish_every: int = 10
    """Publish actor weights every this many updates."""
    max_backlog: int = 200
    """Most owed updates carried over when the learner falls behind the actors."""
    checkpoint_every: int = 2_000
    """Env steps between checkpoints (one is always written on exit)."""
    keep_checkpoints: int = 3
    log_segment_bytes: int = 64 * 2**20
    """Size of one file of the buffers' on-disk logs; whole files are deleted once the buffer dropped their data."""
    max_pending_bytes: int = 1 << 30
    """Received data held for insertion before actors are asked to resend later."""
    log_every: int = 200
    """Env steps between log / console lines."""
    max_env_steps: int = 0
    """Stop (with a checkpoint) after this many received env steps; 0 = run until interrupted."""
    resume: bool = False
    """Continue from the run's replay logs and latest checkpoint."""
    quiet: bool = False
    """No console summary lines (serl train shows its own display)."""

    def __post_init__(self):
        _check_grasp_penalty(self.env, self.agent)
        _require_positive(batch_size=self.batch_size, publish_every=self.publish_every,
                          checkpoint_every=self.checkpoint_every, log_every=self.log_every,
                          buffer_capacity=self.buffer_capacity, log_segment_bytes=self.log_segment_bytes,
                          max_pending_bytes=self.max_pending_bytes)
        if not 0.0 <= self.demo_ratio < 1.0:
            raise ValueError(f"demo_ratio: expected in [0, 1), got {self.demo_ratio}")
        if self.min_online_steps < 1:
            raise ValueError("min_online_steps: must be at least 1")


@dataclasses.dataclass(frozen=True)
class ActorConfig:
    """``serl actor``: runs the env with the newest weights and streams transitions to the learner."""

    env: EnvConfig = EnvConfig()
    run: RunConfig = RunConfig()
    net: NetConfig = NetConfig()
    agent: SACConfig = SACConfig()
    teleop: Literal["none", "keyboard", "spacemouse", "gamepad", "scripted", "browser"] = "none"
    """Teleop device for human interventions ("none" with the console on: the console page, "browser")."""
    console: ConsoleConfig = ConsoleConfig()
    """The training console: a page to watch, pause, mark episodes and take over (loopback unless a token is set)."""
    random_steps: int = 0
    """Uniform random actions for the first steps (before the policy acts)."""
    max_env_steps: int = 0
    """Stop after this many env steps; 0 = run until interrupted."""
    max_lag: int = 0
    """While the learner trains, wait (``lag_patience_s`` at most) when it owes this many updates (its reported
    backlog plus the steps taken since); keeps the update-to-data ratio in fast sims. 0 = free-running (real robots)."""
    lag_patience_s: float = 10.0
    """How long one such wait may last before the actor acts on (a learner compiling on a loaded machine takes long)."""
    log_every: int = 1
    """Episodes between log lines."""
    max_robot_failures: int = 5
    """Consecutive robot errors (safety stop, lost server) recovered from before the actor gives up."""
    resume: bool = False
    """Continue the learner's env-step and episode counters (max_env_steps is then the run's total)."""
    weights_timeout: float = 300.0
    """Seconds to wait for the learner's first weights before the first step (then give up with an error)."""
    stale_weights_s: float = 120.0
    """Warn when the learner trains but sent no newer weights for this many seconds while transitions went out."""
    pause_on_stale_weights: bool = False
    """Hold the robot (no env steps) while the weights are stale, until newer ones arrive."""
    cycle: str = ""
    """A registered task cycle (``PandaRelocateFwBw``): act its tasks in turn on one robot without scene resets,
    each with its own learner (``cycle_ports``) and run directory (``RUN/<task>/``); the tasks take ``env``'s other
    options."""
    cycle_ports: tuple[int, ...] = ()
    """Per task of the cycle, in its order, its learner's two ports (transitions, weights); ``net`` gives the
    learners' host and keys."""
    cycle_classifiers: tuple[Path, ...] = ()
    """Per task of the cycle, in its order, its success classifier (``env.reward_classifier`` is then unused);
    empty = the tasks' own rewards."""
    actor_id: str = ""
    """The actor's name at the learner and in the run's logs (``status/actor-<id>.json``, ``"actor"`` in
    ``episodes.jsonl``); empty = ``<host>-<pid>``, with the status in ``status/actor.json``. Two live actors of one
    learner cannot share an id."""
    quiet: bool = False

    @property
    def status_name(self) -> str:
        """The actor's status file under ``status/``."""
        return f"actor-{self.actor_id}.json" if self.actor_id else "actor.json"

    def __post_init__(self):
        _check_grasp_penalty(self.env, self.agent)
        if bool(self.cycle) != bool(self.cycle_ports) or (self.cycle_classifiers and not self.cycle):
            raise ValueError("cycle, cycle_ports, cycle_classifiers: a task cycle needs its learners' ports (and only "
                             "a cycle takes them)")
        if self.actor_id and not all(c.isalnum() or c in "-_." for c in self.actor_id):
            raise ValueError(f"actor_id: letters, digits, '-', '_' and '.' only, got {self.actor_id!r}")
        _require_positive(log_every=self.log_every, weights_timeout=self.weights_timeout,
                          stale_weights_s=self.stale_weights_s)
        if self.lag_patience_s <= 0:
            raise ValueError("lag_patience_s: must be > 0")
        if self.max_lag < 0 or self.random_steps < 0 or self.max_env_steps < 0:
            raise ValueError("max_lag, random_steps, max_env_steps: must be >= 0")
        if self.teleop == "browser" and not self.console.enabled:
            raise ValueError("teleop: 'browser' is the console page; it needs the console (drop --console.no-enabled)")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """``serl eval``: a checkpoint's deterministic policy for N episodes."""

    run_dir: Path
    """Run directory (holds config.json and checkpoints/)."""
    episodes: int = 10
    seed: int = 1000
    step: int | None = None
    """Checkpoint step; None = latest."""
    env: EnvConfig | None = None
    """Env to evaluate in; None = the run's own."""

    def __post_init__(self):
        _require_positive(episodes=self.episodes)


def _check_grasp_penalty(env: EnvConfig, agent: SACConfig) -> None:
    if env.grasp_penalty > 0 and not agent.grasp_critic:
        raise ValueError("env.grasp_penalty: only the grasp critic pays it; add --agent.grasp-critic "
                         "(or put a gripper cost into the reward with the task's own reward)")


def _require_positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name}: must be positive, got {value}")


def default_run_name() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def latest_run(root: Path, task: str, marker: str = "config.json") -> str | None:
    """Name of the most recently modified run of ``task`` under ``root`` that has a config (``marker``: a task
    cycle's run has its ``train_config.json``, its tasks' runs their own configs)."""
    base = root / task.replace(":", "_").replace("/", "_")
    if not base.is_dir():
        return None
    runs = [p for p in base.iterdir() if (p / marker).exists()]
    return max(runs, key=lambda p: (p / marker).stat().st_mtime).name if runs else None


def to_jsonable(cfg) -> dict:
    """A config dataclass as plain JSON types (paths as strings, tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def write_config(directory: Path, cfg, filename: str = "config.json", extra: Mapping | None = None) -> Path:
    """Write the resolved config beside the run's checkpoints (atomic replace)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    payload = {"kind": type(cfg).__name__, **to_jsonable(cfg), **dict(extra or {})}
    tmp = path.with_name(f".{filename}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def run_config_hash(env: EnvConfig, agent: SACConfig) -> str:
    """Hash of what actor and learner must share: the env identity and the agent config."""
    blob = json.dumps({"env": env.identity(), "agent": to_jsonable(agent)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_config_digests(env: EnvConfig, agent: SACConfig) -> dict[str, str]:
    """Per field of what ``run_config_hash`` hashes ("env.task", "agent.utd_ratio", …), a short digest, so a
    handshake refusal can name the fields that differ; each env override counts as a field of its own."""
    fields = {f"env.{k}": v for k, v in env.identity().items() if k != "overrides"}
    try:
        overrides = env.override_dict()
    except ValueError:
        overrides = None
    if overrides is None or any(f"env.{k}" in fields for k in overrides):
        fields["env.overrides"] = env.identity()["overrides"]
    else:
        fields.update({f"env.{k}": v for k, v in overrides.items()})
    fields.update({f"agent.{k}": v for k, v in to_jsonable(agent).items()})
    return {name: hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]
            for name, value in fields.items()}


def from_dict(cls, data: Mapping):
    """Rebuild a (nested) config dataclass from its JSON form; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - fields - {"kind"}
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    values = {}
    for name in fields & set(data):
        values[name] = _coerce(hints[name], data[name])
    return cls(**values)


def _coerce(hint, value):
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        for option in options:
            try:
                return _coerce(option, value)
            except (TypeError, ValueError):
                continue
        return value
    if origin is typing.Annotated:
        return _coerce(typing.get_args(hint)[0], value)
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return from_dict(hint, value)
    if hint is Path or (isinstance(hint, type) and issubclass(hint, os.PathLike)):
        return Path(value)
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        if args:
            return tuple(_coerce(a, v) for a, v in zip(args, value))
        return tuple(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        if hint is float and isinstance(value, int):
            return float(value)
        raise TypeError(f"expected {hint.__name__}, got {type(value).__name__}")
    return value
