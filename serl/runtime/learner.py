"""The learner process: transitions from actors → replay buffers → SAC updates → weights back to the actors.

Every batch an actor sends is checked against the task's transition schema (a bad one is refused with the
reason and counted, never inserted) and appended to the buffers' on-disk logs before it is acknowledged, so
an acknowledged transition survives any crash; a resume replays the logs. Checkpoints hold the agent, the
counters and the sampling state only.

Update-to-data is tied to received env steps: every received transition owes one ``agent.update`` call
(which itself runs ``agent.config.utd_ratio`` critic steps). When the learner falls behind, at most
``max_backlog`` owed updates are kept. Weights are published every ``publish_every`` updates and whenever
the backlog empties, with the learner's counters in the payload so actors can pace themselves.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from pathlib import Path

import numpy as np

from serl.agents.checkpoint import Checkpointer
from serl.data.demos import load_episode_file
from serl.data.feature_cache import FeatureCache
from serl.data.replay import MixedSampler, ReplayBuffer, check_finite, concat_batches
from serl.data.replay_log import ReplayLog
from serl.data.transition import InvalidTransition, TransitionSpec
from serl.runtime import run_until_signalled
from serl.runtime.config import LearnerConfig, run_config_digests, run_config_hash, write_config
from serl.runtime.envs import build_env, flat_state_keys, observation_example, space_signature
from serl.runtime.logging import MetricsLogger, summary_line, write_status
from serl.runtime.policy import create_agent, encode_weights


STATUS_EVERY_S = 2.0
CHECKPOINT_RETRY_S = (10.0, 600.0)  # first and longest wait before retrying a failed checkpoint (doubling)


@dataclasses.dataclass
class Counters:
    """Progress that survives restarts (stored in every checkpoint)."""

    env_steps: int = 0
    updates: int = 0
    interventions: int = 0
    episodes: int = 0
    weights_version: int = 0


def env_spec(cfg: LearnerConfig) -> tuple[TransitionSpec, dict]:
    """The task's transition schema and space signature (from a twin env built once)."""
    env = build_env(dataclasses.replace(cfg.env, robot_url=None), seed=cfg.run.seed)
    try:
        spaces = {**space_signature(env), "state_keys": flat_state_keys(env)}
        spec = TransitionSpec(observation_example(env), int(np.prod(env.action_space.shape)),
                              action_low=env.action_space.low, action_high=env.action_space.high)
        return spec, spaces
    finally:
        env.close()


class _Collected(list):
    """Stands in for a buffer to collect what a loader would insert."""

    insert = list.append


def load_demos(path: Path, buffer: ReplayBuffer, state_keys: list[str], grasp_penalty: float = 0.0) -> int:
    """Insert every transition of an HDF5 demo file into ``buffer`` (state flattened in the env's order)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"demos: {path} not found")
    return load_episode_file(buffer, path, state_keys, grasp_penalty=grasp_penalty)


class Learner:
    """Buffers, agent, transport and counters of one learner run; ``step()`` does one slice of work."""

    def __init__(self, cfg: LearnerConfig, run_dir: Path):
        from serl.transport.learner_server import LearnerServer, LearnerServerConfig

        self.cfg = cfg
        self.run_dir = run_dir
        self.checkpoint_dir = run_dir / "checkpoints"
        self.spec, spaces = env_spec(cfg)
        self.action_dim = self.spec.action_dim
        obs_example = {k: np.zeros(shape, dtype) for k, (shape, dtype) in self.spec.observations.items()}
        write_config(run_dir, cfg, extra={"spaces": spaces, "config_hash": run_config_hash(cfg.env, cfg.agent)})
        self.agent = create_agent(cfg.run.seed, obs_example, self.action_dim, cfg.agent)
        self.online = ReplayBuffer(obs_example, self.action_dim, cfg.buffer_capacity, seed=cfg.run.seed, spec=self.spec)
        self.demo = ReplayBuffer(obs_example, self.action_dim, cfg.buffer_capacity, seed=cfg.run.seed + 1, spec=self.spec)
        self.counters = Counters()
        self.refused = collections.Counter()  # transitions refused, by the field that was off
        self.checkpointer = Checkpointer(self.checkpoint_dir, max_to_keep=cfg.keep_checkpoints)
        self.server = None
        self.online_log = ReplayLog(run_dir / "replay" / "online", segment_bytes=cfg.log_segment_bytes,
                                    header_extra=lambda: self.server.state_dict() if self.server else None)
        self.demo_log = ReplayLog(run_dir / "replay" / "demo", segment_bytes=cfg.log_segment_bytes)
        has_log = self.online_log.num_transitions or self.demo_log.num_transitions
        if has_log and not cfg.resume:
            raise FileExistsError(f"{run_dir / 'replay'} already holds this run's data; pass --resume to go on "
                                  "with it, or start a new run")
        checkpoint = self.checkpointer.latest_step() if cfg.resume else None
        meta = {}
        if checkpoint is not None:
            self.agent, _, meta = self.checkpointer.restore(self.agent, checkpoint)
            if "replay" not in meta:
                raise ValueError(f"{self.checkpoint_dir}: checkpoint {checkpoint} was written by an older version "
                                 "that kept buffers in checkpoints; it cannot be resumed by this one")
            self.counters = Counters(**meta["counters"])
        transport_state = self.replay_logs(meta.get("replay", {})) if has_log else None
        if checkpoint is not None or has_log:
            after = self.counters.env_steps - int(meta.get("counters", {}).get("env_steps", 0))
            print(f"[learner] resumed from checkpoint {checkpoint} and the replay logs ({after} transitions logged "
                  f"after it): {self.counters}", flush=True)
        if not self.demo_log.num_transitions and cfg.demos is not None:
            count = self.load_demos(cfg.demos, spaces["state_keys"])
            print(f"[learner] loaded {count} demo transitions from {cfg.demos}", flush=True)
        sources = self.sampling_sources()
        self.sampler = MixedSampler(*sources, cfg.demo_ratio)
        if isinstance(sources[0], FeatureCache):
            print(f"[learner] frozen backbone: its features are computed once per stored frame, for "
                  f"{cfg.agent.feature_views} shifted views ({sources[0].bytes_per_frame / 1024:.0f} KiB per frame, "
                  f"{cfg.agent.feature_dtype})", flush=True)
        self._incoming: collections.deque[list[dict]] = collections.deque()  # logged, not yet in the buffers
        self._incoming_lock = threading.Lock()
        self._incoming_bytes = 0
        self.server = LearnerServer(LearnerServerConfig(
            host=cfg.net.host, request_port=cfg.net.port, weights_port=cfg.net.weights_port,
            config_hash=run_config_hash(cfg.env, cfg.agent), config_digests=run_config_digests(cfg.env, cfg.agent),
            keys=cfg.net.keys, insecure=cfg.net.insecure,
        ), on_batch=self.persist)
        if transport_state is not None:
            self.server.load_state_dict(transport_state)
        self.server.start()
        self.logger = MetricsLogger(cfg.run.logger, run_dir / "tb" / "learner", run_name=cfg.run.name,
                                    config=dataclasses.asdict(cfg))
        self.training = len(self.online) >= cfg.min_online_steps
        logged_after_checkpoint = self.counters.env_steps - int(meta.get("counters", {}).get("env_steps", 0))
        self.backlog = min(logged_after_checkpoint, cfg.max_backlog) if self.training else 0
        self.last_checkpoint = self.counters.env_steps
        self.checkpoint_failure: tuple[float, str, float] | None = None  # (since, reason, wait) while they fail
        self.next_checkpoint_try = 0.0
        self.last_log = self.counters.env_steps
        self.metrics: dict[str, float] = {}
        self.status_written = 0.0
        self.compiled = False  # the first update of a process compiles it (tens of seconds)
        self._rate_window: list[tuple[float, int, int]] = [(time.monotonic(), self.counters.updates, self.counters.env_steps)]
        self.publish()  # before any actor's first step: a resumed actor starts from these weights and counters
        self.write_status()

    def sampling_sources(self) -> tuple[ReplayBuffer | FeatureCache, ReplayBuffer | FeatureCache]:
        """Online and demo sources of update batches: the buffers, or with a frozen backbone their feature caches."""
        if not self.agent.caches_features:
            return self.online, self.demo
        def encode(camera, frames, offsets):  # the backbone is frozen: any version of the agent gives the same output
            return self.agent.backbone_views(camera, frames, offsets)

        return tuple(FeatureCache.from_config(buffer, encode, self.cfg.agent, seed)
                     for buffer, seed in ((self.online, self.cfg.run.seed), (self.demo, self.cfg.run.seed + 1)))

    # ---- the on-disk logs --------------------------------------------------------------------------
    def load_demos(self, path: Path, state_keys: list[str]) -> int:
        """Log and insert every transition of an HDF5 demo file (state flattened in the env's order)."""
        if not Path(path).exists():
            raise FileNotFoundError(f"demos: {path} not found")
        transitions = _Collected()
        load_episode_file(transitions, path, state_keys, grasp_penalty=self.cfg.env.grasp_penalty)
        for t in transitions:
            self.spec.check(t)
        for start in range(0, len(transitions), 256):  # records of a bounded size, even for camera demos
            self.demo_log.append(transitions[start:start + 256], source=str(path))
        self.demo.insert_many(transitions)
        return len(transitions)

    def replay_logs(self, positions: dict) -> dict:
        """Rebuild both buffers from their logs; the counters gain what was logged after the checkpoint.

        Returns the transport's dedup table as of the end of the online log.
        """
        for name, log, buffer in (("demo", self.demo_log, self.demo), ("online", self.online_log, self.online)):
            after = int(positions.get(name, 0))
            sessions = {}
            records = log.replay()
            header = next(records, None)
            if header is None:
                continue
            buffer.start_at(header["num_inserted"], header["num_frames"], header["open_episode"],
                            header.get("last_frame"))
            for entry in ((header.get("extra") or {}).get("sessions") or []):
                sessions[(entry[0], entry[1])] = entry[2]
            for record in records:
                for transition in record["transitions"]:
                    transition_id = buffer.num_inserted
                    buffer.insert(transition)
                    if name == "online" and transition_id >= after:
                        self._count(_as_buffer_transition(transition))
                if "seq" in record:
                    sessions.pop((record["actor"], record["session"]), None)  # most recent activity last
                    sessions[(record["actor"], record["session"])] = record["seq"]
            if "rng" in positions:
                buffer.rng.bit_generator.state = positions["rng"][name]
        return {"format": 1, "sessions": [[a, s, seq] for (a, s), seq in sessions.items()]}

    def persist(self, batch) -> None:
        """On the transport's thread, before the ack: check the batch, write it to disk, queue it for the buffers.

        A batch with any bad transition is refused whole (BatchRefused: the actor is told why and moves on);
        an I/O error (a full disk) leaves the logs as they were and the actor resends later.
        """
        from serl.transport.learner_server import BatchRefused

        transitions = []
        for i, raw in enumerate(batch.transitions):
            try:
                transition = _as_buffer_transition(raw)
                self.spec.check(transition)
            except (InvalidTransition, KeyError, TypeError, ValueError) as err:
                field = getattr(err, "field", "transition")
                with self._incoming_lock:
                    self.refused[field] += len(batch.transitions)
                raise BatchRefused(f"batch {batch.seq}, transition {i}: {err}") from None
            transitions.append(transition)
        nbytes = sum(_nbytes(t) for t in transitions)
        with self._incoming_lock:
            if self._incoming_bytes + nbytes > self.cfg.max_pending_bytes and self._incoming:
                raise BufferError("the learner is behind on inserting; resend later")
        self.online_log.append(transitions, actor=batch.actor_id, session=batch.session, seq=batch.seq)
        demo = [t for t in transitions if t["intervened"]]
        if demo:
            try:
                self.demo_log.append(demo)
            except OSError:
                self.online_log.undo_last()
                raise
        with self._incoming_lock:
            self._incoming.append(transitions)
            self._incoming_bytes += nbytes

    # ---- one slice of work -------------------------------------------------------------------------
    def receive(self, timeout: float) -> int:
        """Move logged transitions into the buffers; returns how many arrived."""
        deadline = time.monotonic() + timeout
        while True:
            with self._incoming_lock:
                batches = list(self._incoming)
                self._incoming.clear()
                self._incoming_bytes = 0
            if batches or time.monotonic() >= deadline:
                break
            time.sleep(min(0.005, timeout))
        received = 0
        for transitions in batches:
            for transition in transitions:
                self.online.insert(transition)
                if transition["intervened"]:
                    self.demo.insert(transition)
                self._count(transition)
                received += 1
        if self.training:
            self.backlog = min(self.backlog + received, self.cfg.max_backlog)
        elif len(self.online) >= self.cfg.min_online_steps:
            self.training = True
            self.backlog = min(received, self.cfg.max_backlog)
            self.publish()  # tells actors that updates start, so they pace themselves from now on
        return received

    def _count(self, transition: dict) -> None:
        """The counters' share of one transition now in the online buffer."""
        self.counters.interventions += transition["intervened"]
        self.counters.episodes += bool(transition["dones"])
        self.counters.env_steps += 1

    def update(self) -> None:
        batch = update_batch(self.sampler, self.cfg.batch_size, self.agent.config.utd_ratio)
        check_finite(batch, f"update {self.counters.updates + 1}: the sampled batch (every insert is checked, so "
                            "this is a bug: please report it)")
        compiling = not self.compiled
        if compiling:
            self.write_status(phase="compiling the update")
        self.agent, metrics = self.agent.update(batch)
        self.counters.updates += 1
        if compiling:  # the rate counts from here: compile time says nothing about the update rate
            self.compiled = True
            self._rate_window = [(time.monotonic(), self.counters.updates, self.counters.env_steps)]
            self.metrics = {k: float(v) for k, v in metrics.items()}
            self.write_status()
        self.backlog -= 1
        if self.counters.updates % self.cfg.publish_every == 0 or self.backlog == 0:
            self.metrics = {k: float(v) for k, v in metrics.items()}
            self.publish()

    def publish(self) -> None:
        self.counters.weights_version += 1
        meta = {"env_steps": self.counters.env_steps, "episodes": self.counters.episodes,
                "updates": self.counters.updates, "backlog": self.backlog, "training": float(self.training),
                "checkpoint_failing": float(self.checkpoint_failure is not None)}
        self.server.publish_weights(encode_weights(self.agent, meta), self.counters.weights_version)

    def step(self) -> None:
        """Receive (waiting briefly only when idle), update once if an update is owed, log, checkpoint."""
        self.receive(timeout=0.0 if self.backlog else 0.05)
        if self.backlog > 0:
            self.update()
        if self.counters.env_steps - self.last_log >= self.cfg.log_every:
            self.log()
        if self.counters.env_steps - self.last_checkpoint >= self.cfg.checkpoint_every and \
                time.monotonic() >= self.next_checkpoint_try:
            self.save()
        if time.monotonic() - self.status_written > STATUS_EVERY_S:  # the display moves between log lines too
            self.write_status()

    def log(self) -> None:
        self.last_log = self.counters.env_steps
        now = time.monotonic()
        self._rate_window = (self._rate_window + [(now, self.counters.updates, self.counters.env_steps)])[-10:]
        t0, u0, s0 = self._rate_window[0]
        elapsed = max(now - t0, 1e-9)
        figures = {
            "learner/updates_per_s": (self.counters.updates - u0) / elapsed,
            "learner/env_steps_per_s": (self.counters.env_steps - s0) / elapsed,
            "learner/online_size": len(self.online),
            "learner/demo_size": len(self.demo),
            "learner/backlog": self.backlog,
            **{f"agent/{k}": v for k, v in self.metrics.items()},
        }
        self.logger.log(figures, self.counters.env_steps)
        self.write_status()
        if not self.cfg.quiet:
            print(summary_line("learner", {
                "env_steps": self.counters.env_steps, "updates": self.counters.updates,
                "updates/s": round(figures["learner/updates_per_s"], 1), "online": len(self.online),
                "demo": len(self.demo), **{k: round(v, 4) for k, v in self.metrics.items() if k in ("critic_loss", "q", "temperature")},
            }), flush=True)

    def write_status(self, **extra) -> None:
        self.status_written = time.monotonic()
        shown = {k: self.metrics[k] for k in ("critic_loss", "temperature") if k in self.metrics}
        t0, u0, _ = self._rate_window[0]
        if self.compiled and self.status_written - t0 > 1.0:  # measured from the end of the first update on
            shown["updates_per_s"] = (self.counters.updates - u0) / (self.status_written - t0)
        write_status(self.run_dir / "status" / "learner.json", {
            **dataclasses.asdict(self.counters), "backlog": self.backlog,
            "online_size": len(self.online), "demo_size": len(self.demo), "backend": jax_backend(), **shown,
            "refused_transitions": dict(self.refused), "replay_log_bytes": self.online_log.disk_bytes() + self.demo_log.disk_bytes(),
            **({"checkpoint_error": self.checkpoint_failure[1]} if self.checkpoint_failure else {}),
            **extra,
        })

    def save(self) -> tuple[int | None, str]:
        """Checkpoint the agent, counters, sampling state and log positions (the data is in the logs already).

        Returns the step on disk (None when there is none) and one line saying what happened; the files
        are looked for after writing, so the line never claims a checkpoint that is not there. A failure
        (full disk, permissions) is reported and retried later with a growing wait; training goes on.
        """
        self.last_checkpoint = step = self.counters.env_steps
        if self.checkpointer.latest_step() == step:  # orbax steps are write-once; nothing new arrived since
            return step, f"checkpoint at env step {step} already on disk (nothing new since)"
        if step == 0:
            return self.checkpointer.latest_step(), "no checkpoint written: no transition was received yet"
        replay = {"online": self.online.num_inserted, "demo": self.demo.num_inserted,
                  "rng": {"online": self.online.rng.bit_generator.state, "demo": self.demo.rng.bit_generator.state}}
        meta = {"counters": dataclasses.asdict(self.counters), "replay": replay}
        try:
            self.checkpointer.save(step, self.agent, None, meta)
        except Exception as err:  # noqa: BLE001 - orbax wraps I/O errors in its own types
            return self.checkpointer.latest_step(), self._checkpoint_failed(step, err)
        if not (self.checkpoint_dir / "agent" / str(step)).exists():
            return self.checkpointer.latest_step(), self._checkpoint_failed(step, "the agent folder is missing")
        if self.checkpoint_failure is not None:
            print(f"[learner] checkpoints work again (failing since {time.monotonic() - self.checkpoint_failure[0]:.0f} s)",
                  flush=True)
            self.checkpoint_failure = None
            self.publish()
        for log, buffer in ((self.online_log, self.online), (self.demo_log, self.demo)):
            log.retire(buffer.oldest_id)
        untrained = "; no update finished yet, so the agent is as initialised" if self.counters.updates == 0 else ""
        return step, f"checkpoint written at env step {step} ({self.counters.updates} updates) in {self.checkpoint_dir}{untrained}"

    def _checkpoint_failed(self, step: int, err) -> str:
        now = time.monotonic()
        first = self.checkpoint_failure is None
        since, _, previous = (now, "", CHECKPOINT_RETRY_S[0] / 2) if first else self.checkpoint_failure
        wait = min(2 * previous, CHECKPOINT_RETRY_S[1])
        self.checkpoint_failure = (since, str(err), wait)
        self.next_checkpoint_try = now + wait
        note = f"checkpoint at env step {step} NOT written ({err}); training goes on, next try in {wait:.0f} s"
        print(f"[learner] {note}", flush=True)
        if first:
            self.publish()  # actors learn of it with the weights
        return note

    def finished(self) -> bool:
        return bool(self.cfg.max_env_steps) and self.counters.env_steps >= self.cfg.max_env_steps and self.backlog == 0

    def close(self) -> None:
        self.server.close()
        self.online_log.close()
        self.demo_log.close()
        self.checkpointer.close()
        self.logger.close()


def update_batch(sampler: MixedSampler, batch_size: int, utd_ratio: int) -> dict:
    """``utd_ratio`` minibatches stacked for ``agent.update``, each mixed demo/online by itself.

    The agent runs one critic step per consecutive ``batch_size`` slice and the actor on the last one;
    one mixed draw of ``utd_ratio * batch_size`` rows comes back online-first, demo-last, which would train
    the actor on demo states only and the critic alternately on one source.
    """
    return concat_batches(*(sampler.sample(batch_size) for _ in range(utd_ratio)))


def _nbytes(tree) -> int:
    if isinstance(tree, dict):
        return sum(_nbytes(v) for v in tree.values())
    return int(getattr(tree, "nbytes", 8))


def _as_buffer_transition(transition: dict) -> dict:
    out = dict(transition)
    out["intervened"] = bool(np.asarray(transition.get("intervened", False)))
    out["dones"] = bool(np.asarray(transition["dones"]))
    return out


def run_learner(cfg: LearnerConfig, run_dir: Path, stop: threading.Event | None = None) -> Counters:
    """Serve actors and train until ``stop`` (or ``max_env_steps``); always writes a final checkpoint."""
    stop = stop or threading.Event()
    learner = Learner(cfg, run_dir)
    print(f"[learner] listening on {cfg.net.host}:{learner.server.request_port} "
          f"(weights on {learner.server.weights_port}); run dir {run_dir}", flush=True)
    try:
        while not stop.is_set() and not learner.finished():
            learner.step()
    finally:
        learner.receive(timeout=0.2)  # what the transport already acked goes into the final checkpoint
        step, note = None, "no checkpoint written: saving failed (see the error below)"
        try:
            step, note = learner.save()
        finally:
            learner.write_status(done=True, checkpoint_step=step, checkpoint_note=note)
            print(f"[learner] {note}: {learner.counters}", flush=True)
            learner.close()
    return learner.counters


def jax_backend() -> str:
    import jax

    return jax.default_backend()


def main_with_signals(cfg: LearnerConfig, run_dir: Path) -> Counters:
    """Run the learner; SIGINT/SIGTERM finish the current update, checkpoint and exit."""
    return run_until_signalled(lambda stop: run_learner(cfg, run_dir, stop))
