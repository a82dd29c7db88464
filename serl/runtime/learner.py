"""The learner process: transitions from actors → replay buffers → SAC updates → weights back to the actors.

Update-to-data is tied to received env steps: every received transition owes one ``agent.update`` call
(which itself runs ``agent.config.utd_ratio`` critic steps). When the learner falls behind, at most
``max_backlog`` owed updates are kept. Weights are published every ``publish_every`` updates and whenever
the backlog empties, with the learner's counters in the payload so actors can pace themselves.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np

from serl.agents.checkpoint import Checkpointer
from serl.data.demos import load_episode_file
from serl.data.replay import MixedSampler, ReplayBuffer, concat_batches
from serl.runtime import run_until_signalled
from serl.runtime.config import LearnerConfig, run_config_hash, write_config
from serl.runtime.envs import build_env, flat_state_keys, observation_example, space_signature
from serl.runtime.logging import MetricsLogger, summary_line, write_status
from serl.runtime.policy import create_agent, encode_weights


STATUS_EVERY_S = 2.0


@dataclasses.dataclass
class Counters:
    """Progress that survives restarts (stored in every checkpoint)."""

    env_steps: int = 0
    updates: int = 0
    interventions: int = 0
    episodes: int = 0
    weights_version: int = 0


def env_spec(cfg: LearnerConfig) -> tuple[dict, int, dict]:
    """Observation example, action size and space signature of the task (from a twin env built once)."""
    env = build_env(dataclasses.replace(cfg.env, robot_url=None), seed=cfg.run.seed)
    try:
        spaces = {**space_signature(env), "state_keys": flat_state_keys(env)}
        return observation_example(env), int(np.prod(env.action_space.shape)), spaces
    finally:
        env.close()


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
        obs_example, self.action_dim, spaces = env_spec(cfg)
        write_config(run_dir, cfg, extra={"spaces": spaces, "config_hash": run_config_hash(cfg.env, cfg.agent)})
        self.agent = create_agent(cfg.run.seed, obs_example, self.action_dim, cfg.agent)
        self.online = ReplayBuffer(obs_example, self.action_dim, cfg.buffer_capacity, seed=cfg.run.seed)
        self.demo = ReplayBuffer(obs_example, self.action_dim, cfg.buffer_capacity, seed=cfg.run.seed + 1)
        self.counters = Counters()
        transport_state = None
        self.checkpointer = Checkpointer(self.checkpoint_dir, max_to_keep=cfg.keep_checkpoints)
        if cfg.resume and self.checkpointer.latest_step() is not None:
            step = self.checkpointer.latest_step()
            self.agent, buffers, meta = self.checkpointer.restore(self.agent, step)
            self.online, self.demo = buffers["online"], buffers["demo"]
            self.counters = Counters(**meta["counters"])
            transport_state = meta.get("transport")
            print(f"[learner] resumed from checkpoint {step}: {self.counters}", flush=True)
        elif cfg.demos is not None:
            count = load_demos(cfg.demos, self.demo, spaces["state_keys"], cfg.env.grasp_penalty)
            print(f"[learner] loaded {count} demo transitions from {cfg.demos}", flush=True)
        self.sampler = MixedSampler(self.online, self.demo, cfg.demo_ratio)
        self.server = LearnerServer(LearnerServerConfig(
            host=cfg.net.host, request_port=cfg.net.port, weights_port=cfg.net.weights_port,
            config_hash=run_config_hash(cfg.env, cfg.agent),
        ))
        if transport_state is not None:
            self.server.load_state_dict(transport_state)
        self.server.start()
        self.logger = MetricsLogger(cfg.run.logger, run_dir / "tb" / "learner", run_name=cfg.run.name,
                                    config=dataclasses.asdict(cfg))
        self.backlog = 0
        self.rejected = 0
        self.training = len(self.online) >= cfg.min_online_steps
        self.last_checkpoint = self.counters.env_steps
        self.last_log = self.counters.env_steps
        self.metrics: dict[str, float] = {}
        self.status_written = 0.0
        self.compiled = False  # the first update of a process compiles it (tens of seconds)
        self._rate_window: list[tuple[float, int, int]] = [(time.monotonic(), self.counters.updates, self.counters.env_steps)]
        self.publish()  # before any actor's first step: a resumed actor starts from these weights and counters
        self.write_status()

    # ---- one slice of work -------------------------------------------------------------------------
    def receive(self, timeout: float) -> int:
        """Move received transitions into the buffers; returns how many arrived."""
        received = 0
        for batch in self.server.drain(timeout=timeout):
            for transition in batch.transitions:
                try:
                    transition = _as_buffer_transition(transition)
                    self.online.insert(transition)
                except (KeyError, TypeError, ValueError) as err:
                    # one actor with a wrong env must not take the learner down; its data is dropped loudly
                    self.rejected += 1
                    if self.rejected in (1, 10, 100) or self.rejected % 1000 == 0:
                        print(f"[learner] dropped transition from {batch.actor_id} ({self.rejected} so far): {err}",
                              flush=True)
                    continue
                if transition.get("intervened"):
                    self.demo.insert(transition)
                    self.counters.interventions += 1
                self.counters.episodes += bool(transition["dones"])
                received += 1
        self.counters.env_steps += received
        if self.training:
            self.backlog = min(self.backlog + received, self.cfg.max_backlog)
        elif len(self.online) >= self.cfg.min_online_steps:
            self.training = True
            self.backlog = min(received, self.cfg.max_backlog)
            self.publish()  # tells actors that updates start, so they pace themselves from now on
        return received

    def update(self) -> None:
        batch = update_batch(self.sampler, self.cfg.batch_size, self.agent.config.utd_ratio)
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
                "updates": self.counters.updates, "backlog": self.backlog, "training": float(self.training)}
        self.server.publish_weights(encode_weights(self.agent, meta), self.counters.weights_version)

    def step(self) -> None:
        """Receive (waiting briefly only when idle), update once if an update is owed, log, checkpoint."""
        self.receive(timeout=0.0 if self.backlog else 0.05)
        if self.backlog > 0:
            self.update()
        if self.counters.env_steps - self.last_log >= self.cfg.log_every:
            self.log()
        if self.counters.env_steps - self.last_checkpoint >= self.cfg.checkpoint_every:
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
            **extra,
        })

    def save(self) -> tuple[int | None, str]:
        """Checkpoint agent, buffers, counters and the transport's dedup table (taken in this thread).

        Returns the step on disk (None when there is none) and one line saying what happened; the files
        are looked for after writing, so the line never claims a checkpoint that is not there.
        """
        self.last_checkpoint = step = self.counters.env_steps
        if self.checkpointer.latest_step() == step:  # orbax steps are write-once; nothing new arrived since
            return step, f"checkpoint at env step {step} already on disk (nothing new since)"
        if step == 0:
            return self.checkpointer.latest_step(), "no checkpoint written: no transition was received yet"
        meta = {"counters": dataclasses.asdict(self.counters), "transport": self.server.state_dict()}
        self.checkpointer.save(step, self.agent, {"online": self.online, "demo": self.demo}, meta)
        missing = [path for path in self.checkpoint_files(step) if not path.exists()]
        if missing:
            return self.checkpointer.latest_step(), f"checkpoint at env step {step} NOT written: missing {missing}"
        untrained = "; no update finished yet, so the agent is as initialised" if self.counters.updates == 0 else ""
        return step, f"checkpoint written at env step {step} ({self.counters.updates} updates) in {self.checkpoint_dir}{untrained}"

    def checkpoint_files(self, step: int) -> list[Path]:
        return [self.checkpoint_dir / "agent" / str(step),
                *(self.checkpoint_dir / "buffers" / f"{name}_{step}.npz" for name in ("online", "demo"))]

    def finished(self) -> bool:
        return bool(self.cfg.max_env_steps) and self.counters.env_steps >= self.cfg.max_env_steps and self.backlog == 0

    def close(self) -> None:
        self.server.close()
        self.checkpointer.close()
        self.logger.close()


def update_batch(sampler: MixedSampler, batch_size: int, utd_ratio: int) -> dict:
    """``utd_ratio`` minibatches stacked for ``agent.update``, each mixed demo/online by itself.

    The agent runs one critic step per consecutive ``batch_size`` slice and the actor on the last one;
    one mixed draw of ``utd_ratio * batch_size`` rows comes back online-first, demo-last, which would train
    the actor on demo states only and the critic alternately on one source.
    """
    return concat_batches(*(sampler.sample(batch_size) for _ in range(utd_ratio)))


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
