"""The actor process: runs the env with the newest policy weights and streams transitions to the learner.

Weights are swapped between env steps as soon as a newer version arrives. When the learner is gone the
actor keeps acting with the weights it has (the transport queues transitions and reconnects).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import jax
import numpy as np

from serl.data.transition import Transition, make_transition
from serl.envs.franka_env import franka_env_under
from serl.runtime import run_until_signalled
from serl.runtime.config import ActorConfig, run_config_hash, write_config
from serl.runtime.envs import build_env, observation_example, space_signature
from serl.runtime.logging import MetricsLogger, summary_line, write_status
from serl.runtime.policy import create_agent, decode_weights


class EpisodeStats:
    """Return, success, length, intervention rate and control-period timing of one episode."""

    def __init__(self):
        self.ret = 0.0
        self.length = 0
        self.interventions = 0
        self.success = False
        self.period_errors: list[float] = []
        self.step_seconds: list[float] = []
        self.weights_version_at_start = -1

    def add(self, reward: float, info: dict, step_seconds: float) -> None:
        self.ret += float(reward)
        self.length += 1
        self.interventions += bool(info.get("intervened", False))
        self.success |= bool(info.get("succeed", False))
        if "control_period_error" in info:
            self.period_errors.append(abs(float(info["control_period_error"])))
        self.step_seconds.append(step_seconds)

    def summary(self) -> dict[str, float]:
        steps = np.asarray(self.step_seconds) if self.step_seconds else np.zeros(1)
        out = {
            "episode/return": self.ret,
            "episode/length": self.length,
            "episode/success": float(self.success),
            "episode/intervention_rate": self.interventions / max(self.length, 1),
            "timing/step_ms_mean": 1e3 * float(steps.mean()),
            "timing/step_ms_p99": 1e3 * float(np.percentile(steps, 99)),
        }
        if self.period_errors:
            out["timing/control_period_error_ms_max"] = 1e3 * max(self.period_errors)
        return out


def transition_from_step(obs, action, reward, next_obs, terminated, truncated, info) -> Transition:
    """The transition of one env step (the human's action when intervened), as the learner takes it."""
    executed = info.get("executed_action")
    return make_transition(
        obs, action if executed is None else executed, reward, next_obs, terminated=terminated, truncated=truncated,
        intervened=bool(info.get("intervened", False)), grasp_penalty=info.get("grasp_penalty"),
    )


def connect(cfg: ActorConfig, hash_: str, actor_id: str):
    """An ActorClient to the learner (non-blocking sends, reconnects on its own)."""
    from serl.transport.actor_client import ActorClient, ActorClientConfig

    return ActorClient(ActorClientConfig(
        actor_id=actor_id, config_hash=hash_, host=cfg.net.host,
        request_port=cfg.net.port, weights_port=cfg.net.weights_port,
    ))


def run_actor(cfg: ActorConfig, run_dir: Path, stop: threading.Event | None = None) -> dict:
    """Act until ``max_env_steps`` or ``stop``; returns final counters."""
    stop = stop or threading.Event()
    run_dir.mkdir(parents=True, exist_ok=True)
    env = build_env(cfg.env, seed=cfg.run.seed, teleop=cfg.teleop)
    write_config(run_dir, cfg, "actor_config.json", extra={"spaces": space_signature(env)})
    agent = create_agent(cfg.run.seed, observation_example(env), int(np.prod(env.action_space.shape)), cfg.agent)
    actor_id = f"{socket.gethostname()}-{os.getpid()}"
    client = connect(cfg, run_config_hash(cfg.env, cfg.agent), actor_id)
    logger = MetricsLogger(cfg.run.logger, run_dir / "tb" / "actor", run_name=cfg.run.name)
    status_path = run_dir / "status" / "actor.json"
    episodes_path = run_dir / "episodes.jsonl"  # one line per episode: the learning curve
    rng = jax.random.PRNGKey(cfg.run.seed + 1)
    action_rng = np.random.default_rng(cfg.run.seed)
    low, high = env.action_space.low, env.action_space.high

    weights = WeightsSlot()
    steps = episodes = robot_failures = 0
    recent_success: list[float] = []
    recent_return: list[float] = []
    try:
        write_status(status_path, {"env_steps": 0, "episodes": 0, "weights_version": -1, "phase": "waiting for weights"})
        agent = _wait_for_first_weights(client, weights, agent, cfg, stop)
        if cfg.resume:
            steps, episodes = int(weights.meta.get("env_steps", 0)), int(weights.meta.get("episodes", 0))
            weights.at_step = steps
            print(f"[actor] resuming at env step {steps}, episode {episodes} with weights version {weights.version}"
                  f"{_episode_log_note(episodes_path, steps)}", flush=True)
        write_status(status_path, {"env_steps": steps, "episodes": episodes, "weights_version": weights.version,
                                   "phase": "compiling the policy"})
        if cfg.max_env_steps and steps >= cfg.max_env_steps:
            print(f"[actor] the budget of {cfg.max_env_steps} env steps is spent ({steps} taken); "
                  "pass a larger --env-steps to go on", flush=True)
        first_step = steps + 1
        obs, _ = env.reset(seed=cfg.run.seed)
        stats = EpisodeStats()
        while not stop.is_set() and (cfg.max_env_steps == 0 or steps < cfg.max_env_steps):
            agent = weights.apply_newest(client, agent, steps)
            if cfg.max_lag and weights.owed_updates(steps) >= cfg.max_lag:
                agent = _wait_for_learner(client, weights, agent, steps, stop)
            weights_version = weights.version
            if stats.length == 0:
                stats.weights_version_at_start = weights_version

            started = time.perf_counter()
            if steps < cfg.random_steps:
                action = action_rng.uniform(low, high).astype(np.float32)
            else:
                rng, key = jax.random.split(rng)
                action = np.asarray(agent.sample_actions(obs, key), dtype=np.float32)
            try:
                next_obs, reward, terminated, truncated, info = env.step(action)
                robot_failures = 0
            except (RuntimeError, ConnectionError, OSError) as err:
                # a safety stop or a lost robot server: end the episode here, clear errors, start a new one
                robot_failures += 1
                if robot_failures > cfg.max_robot_failures:
                    raise
                print(f"[actor] episode aborted by the robot ({err}); recovering", flush=True)
                _recover(env)
                obs, _ = env.reset()
                stats = EpisodeStats()
                continue
            client.send(transition_from_step(obs, action, reward, next_obs, terminated, truncated, info))
            stats.add(reward, info, time.perf_counter() - started)
            steps += 1
            obs = next_obs
            if steps == first_step:  # the policy is compiled: the display drops its "compiling" phase
                write_status(status_path, {"env_steps": steps, "episodes": episodes, "weights_version": weights_version})
            if terminated or truncated:
                episodes += 1
                summary = stats.summary()
                recent_success = (recent_success + [summary["episode/success"]])[-20:]
                recent_return = (recent_return + [summary["episode/return"]])[-20:]
                summary["weights_version"] = weights_version
                summary["weights_version_at_start"] = stats.weights_version_at_start
                logger.log(summary, steps)
                with open(episodes_path, "a") as handle:
                    handle.write(json.dumps({"env_steps": steps, "episode": episodes, **summary}) + "\n")
                write_status(status_path, {
                    "env_steps": steps, "episodes": episodes, "weights_version": weights_version,
                    "success_rate": float(np.mean(recent_success)), "return": float(np.mean(recent_return)),
                    "intervention_rate": summary["episode/intervention_rate"],
                    "step_ms_p99": summary["timing/step_ms_p99"],
                })
                if not cfg.quiet and episodes % cfg.log_every == 0:
                    print(summary_line("actor", {
                        "steps": steps, "episode": episodes, "return": round(summary["episode/return"], 3),
                        "success": int(summary["episode/success"]),
                        "success_rate20": round(float(np.mean(recent_success)), 2), "weights": weights_version,
                    }), flush=True)
                obs, _ = env.reset()
                stats = EpisodeStats()
    finally:
        write_status(status_path, {
            "env_steps": steps, "episodes": episodes, "weights_version": weights.version, "done": True,
            "success_rate": float(np.mean(recent_success)) if recent_success else 0.0,
            "return": float(np.mean(recent_return)) if recent_return else 0.0,
        })
        client.close(flush_timeout=5.0)
        logger.close()
        env.close()
    return {"env_steps": steps, "episodes": episodes, "weights_version": weights.version}


def _recover(env) -> None:
    """Clear the robot's error state (safety stop, reflex) before the next reset, when the client can."""
    base = franka_env_under(env)
    if base is None:
        return
    try:
        base.client.recover()
    except (RuntimeError, ConnectionError, OSError) as err:
        print(f"[actor] recover failed: {err}", flush=True)


class WeightsSlot:
    """The weights the actor uses: swapped in between steps whenever the transport holds newer ones."""

    def __init__(self):
        self.version = -1
        self.meta: dict[str, float] = {}
        self.received_at = 0.0
        self.at_step = 0
        self.gave_up = False
        self._blob = None

    def owed_updates(self, step: int) -> float:
        """Updates the learner still owes, estimated from its last report plus the steps taken since
        (0 once the actor stopped waiting for these weights: then it acts freely until newer ones arrive)."""
        if not self.meta.get("training") or self.gave_up:
            return 0.0
        return float(self.meta.get("backlog", 0)) + (step - self.at_step)

    def apply_newest(self, client, agent, step: int):
        newest = client.latest_weights()
        if newest is None or newest[1] is self._blob:
            return agent
        version, self._blob = newest
        try:
            agent, self.meta = decode_weights(agent, self._blob)
        except ValueError as err:
            print(f"[actor] ignoring weights version {version}: {err}", flush=True)
            return agent
        self.version, self.received_at, self.at_step, self.gave_up = version, time.monotonic(), step, False
        return agent


def _wait_for_first_weights(client, weights: "WeightsSlot", agent, cfg: ActorConfig, stop: threading.Event):
    """The learner's current weights (and, with them, its counters) before the first step; RuntimeError after
    ``cfg.weights_timeout`` s without any."""
    deadline = time.monotonic() + cfg.weights_timeout
    while weights.version < 0 and not stop.is_set():
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"no weights from the learner at {cfg.net.host}:{cfg.net.port} within {cfg.weights_timeout:.0f} s; "
                "is it running (see its log), and do both sides use the same env and agent options?")
        agent = weights.apply_newest(client, agent, 0)
        time.sleep(0.01)
    return agent


def _episode_log_note(path: Path, steps: int) -> str:
    """A note when the episode log goes past the learner's checkpoint (steps after it were lost in a kill)."""
    try:
        lines = path.read_text().splitlines()
        logged = json.loads(lines[-1])["env_steps"] if lines else 0
    except (OSError, ValueError, KeyError):
        return ""
    if logged <= steps:
        return ""
    return f" (episodes.jsonl goes to step {logged}: the steps after the learner's last checkpoint were lost)"


def _wait_for_learner(client, weights: WeightsSlot, agent, step: int, stop: threading.Event, patience: float = 10.0):
    """Wait for newer weights (the learner caught up); go on acting after ``patience`` s without any."""
    deadline = time.monotonic() + patience
    version = weights.version
    while not stop.is_set() and time.monotonic() < deadline and weights.version == version:
        time.sleep(0.001)
        agent = weights.apply_newest(client, agent, step)
    if weights.version == version:
        weights.gave_up = True
    return agent


def main_with_signals(cfg: ActorConfig, run_dir: Path) -> dict:
    """Run the actor; SIGINT/SIGTERM stop it after the current step."""
    return run_until_signalled(lambda stop: run_actor(cfg, run_dir, stop))
