"""The actor process: runs the env with the newest policy weights and streams transitions to the learner.

Weights are swapped between env steps as soon as a newer version arrives. When the learner is gone the
actor keeps acting with the weights it has (the transport queues transitions and reconnects). Weights that are
not finite are refused; when the policy still gives a non-finite action (or, with ``pause_on_stale_weights``,
the weights are stale) the actor holds the robot at its current target, without env steps or transitions,
until newer weights arrive.

With the training console on (``cfg.console``) the actor publishes each step to a ``ConsoleHub`` served by a
``ConsoleServer`` and, between steps, carries out the page's commands (``ActorConsole``): pause holds the robot
(no env steps, no transitions) until resume; success, failure and end-episode marks end the episode on its next
step through the env's ``ConsoleReward``; discard marks the last finished episode discarded in
``episodes.jsonl`` (its transitions were streamed already and stay in the learner's buffers); safety stop
latches the robot's safety stop and sends nothing until recover, which clears it and starts a new episode.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
from pathlib import Path

import jax
import numpy as np

from robot_servers.guard import is_safety_stop_error
from serl.console.hub import ONE_ARM, ArmView, ConsoleHub, StepView
from serl.console.reward import MARKS, console_marks
from serl.data.transition import Transition, make_transition
from serl.envs.dual_franka_env import DualFrankaEnv, arm_key, robot_env_under
from serl.envs.franka_env import FrankaEnv, franka_env_under
from serl.envs.intervention import InterventionWrapper
from serl.runtime import run_until_signalled
from serl.agents.sac import SACConfig
from serl.runtime.config import ActorConfig, NetConfig, run_config_digests, run_config_hash, write_config
from serl.runtime.env_config import EnvConfig
from serl.runtime.envs import build_env, import_task_module, observation_example, space_signature
from serl.runtime.logging import MetricsLogger, read_status, summary_line, write_status
from serl.runtime.policy import create_agent, decode_weights

STATUS_EVERY_S = 1.0  # the status file between episodes: a held robot finishes none


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
        self.held_steps = 0

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
            "episode/held_steps": self.held_steps,
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


def connect(env: EnvConfig, net: NetConfig, agent: SACConfig, actor_id: str):
    """An ActorClient to the learner (non-blocking sends, reconnects on its own)."""
    from serl.transport.actor_client import ActorClient, ActorClientConfig

    return ActorClient(ActorClientConfig(
        actor_id=actor_id, config_hash=run_config_hash(env, agent), host=net.host,
        request_port=net.port, weights_port=net.weights_port,
        config_digests=run_config_digests(env, agent), keys=net.keys,
    ))


class Lane:
    """One task the actor acts in: its env, policy, learner link, counters and logs. An actor has one; in a task
    cycle it has one per task, all on the same robot."""

    def __init__(self, cfg: ActorConfig, env_cfg: EnvConfig, net: NetConfig, run_dir: Path, env, actor_id: str,
                 notices: "Notices", shown: dict):
        self.cfg = cfg
        self.task = env_cfg.task
        self.env = env
        self.run_dir = run_dir
        self.shown = shown
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir, dataclasses.replace(cfg, env=env_cfg, net=net),
                     cfg.status_name.replace(".json", "_config.json"), extra={"spaces": space_signature(env)})
        self.agent = create_agent(cfg.run.seed, observation_example(env), int(np.prod(env.action_space.shape)),
                                  cfg.agent)
        self.client = connect(env_cfg, net, cfg.agent, actor_id)
        self.net = net
        self.weights = WeightsSlot(notices)
        self.logger = MetricsLogger(cfg.run.logger, run_dir / "tb" / "actor", run_name=cfg.run.name)
        self.episodes_path = run_dir / "episodes.jsonl"  # one line per episode: the learning curve
        self.status_path = run_dir / "status" / cfg.status_name
        self.steps = self.episodes = self.held_steps = self.bad_actions = 0
        self.recent_success: list[float] = []
        self.recent_return: list[float] = []
        self.last_episode: dict[str, float] = {"success_rate": 0.0, "return": 0.0}
        self.status_written = 0.0

    def report(self, **extra) -> None:
        """Write the status file: progress, the weights' age, and what made the robot hold."""
        self.status_written = now = time.monotonic()
        age = self.weights.age(now)
        write_status(self.status_path, {
            "env_steps": self.steps, "episodes": self.episodes, "weights_version": self.weights.version,
            **self.last_episode, "held_steps": self.held_steps, "bad_actions": self.bad_actions,
            "refused_weights": self.weights.refused, "weights_age_s": None if age is None else round(age, 1),
            "weights_stale": self.weights.stale(now, self.cfg.stale_weights_s), **self.shown, **extra,
        })

    def phase(self, phase: str) -> None:
        write_status(self.status_path, {"env_steps": self.steps, "episodes": self.episodes,
                                        "weights_version": self.weights.version, "phase": phase, **self.shown})

    def finish_episode(self, stats: "EpisodeStats", weights_version: int, **extra) -> dict:
        """Count the episode and write it to the logs (with ``extra``); returns its summary."""
        self.episodes += 1
        summary = stats.summary()
        self.recent_success = (self.recent_success + [summary["episode/success"]])[-20:]
        self.recent_return = (self.recent_return + [summary["episode/return"]])[-20:]
        summary["weights_version"] = weights_version
        summary["weights_version_at_start"] = stats.weights_version_at_start
        self.logger.log(summary, self.steps)
        actor = {"actor": self.cfg.actor_id} if self.cfg.actor_id else {}
        with open(self.episodes_path, "a") as handle:
            handle.write(json.dumps({"env_steps": self.steps, "episode": self.episodes, "time": time.time(), **actor,
                                     **extra, **summary}) + "\n")
        self.last_episode = {
            "success_rate": float(np.mean(self.recent_success)), "return": float(np.mean(self.recent_return)),
            "intervention_rate": summary["episode/intervention_rate"],
            "step_ms_p99": summary["timing/step_ms_p99"],
        }
        self.report()
        return summary

    def close(self) -> None:
        self.report(done=True)
        self.client.close(flush_timeout=5.0)
        self.logger.close()


def build_lanes(cfg: ActorConfig, run_dir: Path, teleop: str, hub, actor_id: str, notices: "Notices",
                shown: dict) -> list[Lane]:
    """The actor's lanes: its task, or each task of ``cfg.cycle`` in order (``RUN/<task>/``), all over the first
    lane's robot and, except the scripted expert (which drives one env), its teleop device."""
    specs = _cycle_specs(cfg, run_dir) if cfg.cycle else [(cfg.env, cfg.net, run_dir)]
    envs: list = []
    lanes: list[Lane] = []
    try:
        for env_cfg, net, lane_dir in specs:
            robot = franka_env_under(envs[0]).client if envs else None
            device = envs[0].teleop if envs and isinstance(envs[0], InterventionWrapper) and teleop != "scripted" \
                else teleop
            envs.append(build_env(env_cfg, seed=cfg.run.seed, teleop=device, console=hub, robot=robot))
            lanes.append(Lane(cfg, env_cfg, net, lane_dir, envs[-1], actor_id, notices, shown))
    except BaseException:
        for lane in lanes:
            lane.client.close(flush_timeout=0.0)
        for env in reversed(envs):
            env.close()
        raise
    return lanes


def _cycle_specs(cfg: ActorConfig, run_dir: Path) -> list[tuple[EnvConfig, NetConfig, Path]]:
    """Per task of ``cfg.cycle``: its env (``cfg.env`` with the task and its classifier), learner and run dir."""
    from serl.envs.task_cycles import get_cycle

    if cfg.env.task_module:
        import_task_module(cfg.env.task_module)  # it may register the cycle
    cycle = get_cycle(cfg.cycle)
    count = len(cycle.tasks)
    for name, given, per_task in (("cycle_ports", cfg.cycle_ports, 2), ("cycle_classifiers", cfg.cycle_classifiers, 1)):
        if given and len(given) != per_task * count:
            raise ValueError(f"{name}: {cfg.cycle} has {count} tasks ({', '.join(cycle.tasks)}), so {per_task * count} "
                             f"values, got {len(given)}")
    classifiers = cfg.cycle_classifiers or (cfg.env.reward_classifier,) * count
    ports = cfg.cycle_ports
    return [(dataclasses.replace(cfg.env, task=task, reward_classifier=classifier),
             dataclasses.replace(cfg.net, port=ports[2 * i], weights_port=ports[2 * i + 1]), run_dir / task)
            for i, (task, classifier) in enumerate(zip(cycle.tasks, classifiers))]


def run_actor(cfg: ActorConfig, run_dir: Path, stop: threading.Event | None = None,
              hub: ConsoleHub | None = None) -> dict:
    """Act until ``max_env_steps`` (over all lanes) or ``stop``; returns final counters. ``hub``: publish to (and
    take commands from) this console hub, whether or not ``cfg.console`` serves a page for it."""
    stop = stop or threading.Event()
    run_dir.mkdir(parents=True, exist_ok=True)
    if hub is None and cfg.console.enabled:
        hub = cfg.console.hub()
    teleop = "browser" if hub is not None and cfg.teleop == "none" else cfg.teleop
    notices = Notices()
    shown: dict = {}
    actor_id = cfg.actor_id or f"{socket.gethostname()}-{os.getpid()}"
    lanes = build_lanes(cfg, run_dir, teleop, hub, actor_id, notices, shown)
    lane = lanes[0]
    console = None if hub is None else ActorConsole(hub, lane.env, lane.run_dir, actor_id=cfg.actor_id)
    turns = None
    if cfg.cycle:
        from serl.runtime.cycle import CycleTurns

        turns = CycleTurns(cfg.cycle, lanes, run_dir, cfg.run.seed)
    try:
        if console is not None and cfg.console.enabled:  # the address comes first: compiling takes a while
            console.serve(cfg.console)
            if console.url:
                shown["console"] = console.url
        if shown:
            for each in lanes:
                each.phase("starting")
    except BaseException:
        _close_lanes(lanes, console)
        raise
    rng = jax.random.PRNGKey(cfg.run.seed + 1)
    action_rng = np.random.default_rng(cfg.run.seed)
    robot_failures = holding = 0

    def publish(obs, acting: str, reward: float = 0.0) -> None:
        if console is not None:
            console.publish(obs, acting, steps=lane.steps, episode=lane.episodes + 1, episode_step=stats.length,
                            episode_return=stats.ret, success=stats.success, reward=reward,
                            weights_version=lane.weights.version, weights_age_s=lane.weights.age(time.monotonic()))

    def total_steps() -> int:
        return sum(each.steps for each in lanes)

    def next_episode(finished: Lane | None, success: bool):
        """Reset for the next episode: the same lane, or in a cycle the lane whose turn it is."""
        nonlocal lane
        if turns is None:
            return lane.env.reset()[0]
        lane, obs = turns.next_episode(finished, success)
        if console is not None:
            console.use(lane.env, lane.run_dir)
        return obs

    stats = EpisodeStats()
    try:
        for each in lanes:
            each.phase("waiting for weights")
            each.agent = _wait_for_first_weights(each.client, each.weights, each.agent, cfg, each.net, stop,
                                                 on_refused=lambda: each.report(
                                                     phase=f"waiting for good weights ({each.weights.refused} refused)"))
            if each.weights.version < 0:  # stopped before any good weights: the robot is left alone, not even reset
                return {"env_steps": 0, "episodes": 0, "weights_version": -1}
        for each in lanes:
            if cfg.resume:
                each.steps, each.episodes = int(each.weights.meta.get("env_steps", 0)), int(each.weights.meta.get("episodes", 0))
                each.weights.at_step = each.steps
                print(f"[actor] {each.task + ': ' if turns else ''}resuming at env step {each.steps}, episode "
                      f"{each.episodes} with weights version {each.weights.version}"
                      f"{_episode_log_note(each.episodes_path, each.steps)}", flush=True)
            each.phase("compiling the policy")
        if cfg.max_env_steps and total_steps() >= cfg.max_env_steps:
            print(f"[actor] the budget of {cfg.max_env_steps} env steps is spent ({total_steps()} taken); "
                  "pass a larger --env-steps to go on", flush=True)
        first_step = {id(each): each.steps + 1 for each in lanes}
        obs = lane.env.reset(seed=cfg.run.seed)[0] if turns is None else next_episode(None, False)
        for each in lanes:
            if each is not lane:
                each.report(phase="waiting for its turn")
        stats = EpisodeStats()
        while not stop.is_set() and (cfg.max_env_steps == 0 or total_steps() < cfg.max_env_steps):
            weights = lane.weights
            lane.agent = weights.apply_newest(lane.client, lane.agent, lane.steps)
            if cfg.max_lag and weights.owed_updates(lane.steps) >= cfg.max_lag:
                lane.agent = _wait_for_learner(lane.client, weights, lane.agent, lane.steps, stop, cfg.lag_patience_s)
            weights_version = weights.version
            if stats.length == 0:
                stats.weights_version_at_start = weights_version
            if console is not None:
                if console.apply_commands(lane.episodes_path, lane.episodes, lane.steps) == "new episode":
                    obs = lane.env.reset()[0]
                    stats = EpisodeStats()
                if console.holding:
                    console.hold()
                    publish(obs, "paused")
                    if time.monotonic() - lane.status_written > STATUS_EVERY_S:
                        lane.report(phase=console.holding)
                    continue

            started = time.perf_counter()
            hold = _hold_reason(weights, cfg, time.monotonic())
            if hold:
                action = None
            elif total_steps() < cfg.random_steps:
                action = action_rng.uniform(lane.env.action_space.low, lane.env.action_space.high).astype(np.float32)
            else:
                rng, key = jax.random.split(rng)
                action = np.asarray(lane.agent.sample_actions(obs, key), dtype=np.float32)
                if not np.all(np.isfinite(action)):
                    # never to the robot nor to the learner; these weights are done with
                    lane.bad_actions += 1
                    weights.bad_version = weights_version
                    hold = f"weights version {weights_version} gave a non-finite action; waiting for newer weights"
                    notices.say("action", f"the policy of weights version {weights_version} gave the non-finite "
                                f"action {action.tolist()} ({lane.bad_actions} so far); holding the robot until "
                                "newer weights arrive", every=10.0)
            try:
                if hold:
                    _hold(lane.env)
                else:
                    next_obs, reward, terminated, truncated, info = lane.env.step(action)
                robot_failures = 0
            except (RuntimeError, ConnectionError, OSError) as err:
                # a safety stop or a lost robot server: end the episode here, clear errors, start a new one
                robot_failures += 1
                if robot_failures > cfg.max_robot_failures:
                    raise
                print(f"[actor] episode aborted by the robot ({err}); recovering", flush=True)
                _recover(lane.env)
                obs = lane.env.reset()[0]
                stats = EpisodeStats()
                continue
            if hold:
                lane.held_steps += 1
                holding += 1
                stats.held_steps += 1
                notices.say("hold", f"holding the robot: {hold} ({lane.held_steps} steps held so far)", every=30.0)
                publish(obs, "held")
                if time.monotonic() - lane.status_written > STATUS_EVERY_S:
                    lane.report(phase=f"holding the robot: {hold}")
                continue
            if holding:
                notices.say("resume", f"acting again with weights version {weights_version} after {holding} held "
                                      "steps", every=10.0)
                holding = 0
            lane.client.send(transition_from_step(obs, action, reward, next_obs, terminated, truncated, info))
            weights.sent(time.monotonic())
            stats.add(reward, info, time.perf_counter() - started)
            lane.steps += 1
            obs = next_obs
            publish(obs, "human" if info.get("intervened") else "policy", float(reward))
            if lane.steps == first_step[id(lane)] or time.monotonic() - lane.status_written > STATUS_EVERY_S:
                lane.report()  # the first one after compiling drops the display's "compiling" phase
            if terminated or truncated:
                summary = lane.finish_episode(stats, weights_version,
                                              **({"cycle_env_steps": total_steps()} if turns else {}))
                if not cfg.quiet and lane.episodes % cfg.log_every == 0:
                    print(summary_line(f"actor{' ' + lane.task if turns else ''}", {
                        "steps": lane.steps, "episode": lane.episodes, "return": round(summary["episode/return"], 3),
                        "success": int(summary["episode/success"]),
                        "success_rate20": round(lane.last_episode["success_rate"], 2), "weights": weights_version,
                        **({"held": stats.held_steps} if stats.held_steps else {}),
                    }), flush=True)
                obs = next_episode(lane, bool(summary["episode/success"]))
                stats = EpisodeStats()
    finally:
        if turns is not None:
            turns.close()
        _close_lanes(lanes, console)
    return {"env_steps": total_steps(), "episodes": sum(each.episodes for each in lanes),
            "weights_version": lanes[0].weights.version,
            **({"lanes": {each.task: {"env_steps": each.steps, "episodes": each.episodes} for each in lanes}}
               if turns else {})}


def _close_lanes(lanes: list[Lane], console) -> None:
    for lane in lanes:
        lane.close()
    if console is not None:
        console.close()
    for lane in reversed(lanes):  # the first lane's env owns the robot: closed last
        lane.env.close()


class ActorConsole:
    """The actor's side of the training console: publishes steps to the hub and carries out the page's commands.

    Publishing keeps references to the observation's frames (no copies, no encoding: the server's threads do
    that); the learner's status and the robot's health are refreshed about once a second.
    """

    REFRESH_S = 1.0

    def __init__(self, hub: ConsoleHub, env, run_dir: Path | None, who: str = "actor", actor_id: str = ""):
        self.hub = hub
        self.who = who
        self.actor_id = actor_id  # marks the discard lines of one of several actors
        self.use(env, run_dir)
        self.server = None
        self.url: str | None = None
        self.stopped = ""  # why the robot's safety stop is latched from the page ("" when not)
        self.discarded = 0  # the newest episode marked discarded
        self.health: dict[str, dict] = {}  # per arm
        self._refreshed = 0.0

    def use(self, env, run_dir: Path | None) -> None:
        """Act on ``env`` and show the learner of ``run_dir`` (a task cycle switches tasks on the same robot)."""
        self.env = env
        robot = robot_env_under(env)
        self.arms: dict[str, FrankaEnv] = ({} if robot is None else dict(robot.arms)
                                           if isinstance(robot, DualFrankaEnv) else {ONE_ARM: robot})
        self.safety_boxes = {name: _box_json(arm.task.safety_box) for name, arm in self.arms.items()}
        self.marks = console_marks(env)
        self.run_dir = run_dir
        self.learner_status = None if run_dir is None else run_dir / "status" / "learner.json"

    def serve(self, config) -> str | None:
        """Start the page's server and print its address on a line of its own."""
        from serl.console.server import ConsoleServer

        self.server = ConsoleServer(self.hub, config, self.run_dir)
        try:
            self.url = self.server.start()
        except OSError as err:  # a busy port must not cost the run: it goes on without the page
            print(f"[{self.who}] {err}; running without the console page", flush=True)
            self.server = None
            return None
        if self.url:
            print(f"console: {self.server.page_url}", flush=True)
        return self.url

    @property
    def holding(self) -> str:
        """Why the robot holds for the page ("" to act)."""
        if self.stopped:
            return f"safety stop from the console ({self.stopped}); recover on the page to go on"
        return "paused from the console" if self.hub.paused else ""

    def apply_commands(self, episodes_path: Path, episodes: int, steps: int) -> str:
        """Carry out the page's commands since the last step; "new episode" when the env must be reset."""
        outcome = ""
        for name in self.hub.commands():
            if name in MARKS and self.marks is not None:
                self.marks.mark(MARKS[name])
            elif name == "discard":
                self._discard(episodes_path, episodes, steps)
            elif name == "safety_stop":
                self.safety_stop()
            elif name == "recover" and self.recover():
                outcome = "new episode"  # the interrupted episode is dropped, as after a robot error
        return outcome

    def _discard(self, episodes_path: Path, episodes: int, steps: int) -> None:
        if episodes <= self.discarded:
            return
        self.discarded = episodes
        with open(episodes_path, "a") as handle:
            actor = {"actor": self.actor_id} if self.actor_id else {}
            handle.write(json.dumps({"discarded": episodes, "env_steps": steps, **actor}) + "\n")
        print(f"[{self.who}] console: episode {episodes} marked discarded in {episodes_path.name} (its transitions "
              "are in the learner's buffers already)", flush=True)

    def recover(self) -> bool:
        """The robot client's recover; True when it cleared a safety stop latched from the page."""
        _recover(self.env)
        if not self.stopped:
            return False
        print(f"[{self.who}] console: safety stop cleared; starting a new episode", flush=True)
        self.stopped = ""
        return True

    def safety_stop(self) -> None:
        """Latch the robot's (both arms') safety stop; where the robot cannot, the actor itself sends nothing until
        recover."""
        reason = "stopped from the console"
        robot = robot_env_under(self.env)
        if robot is None:
            self.stopped = reason
            return
        try:
            robot.safety_stop(reason)
        except (NotImplementedError, RuntimeError, ConnectionError, OSError) as err:
            reason = f"the robot could not latch it ({err}); the actor sends nothing"
        self.stopped = reason
        print(f"[{self.who}] console: safety stop: {reason}", flush=True)

    def hold(self) -> None:
        """One control period held for the page: paused, the target is sent again (a live client for a real
        arm's watchdog); stopped, nothing is sent (the robot refuses commands) and only the state is read."""
        if not self.stopped:
            _hold(self.env)
            return
        robot = robot_env_under(self.env)
        if robot is None:
            time.sleep(0.05)
            return
        try:
            robot.idle()
        except (RuntimeError, ConnectionError, OSError):
            time.sleep(0.05)
            return
        if robot.lockstep:
            time.sleep(robot.period)

    def publish(self, obs, acting: str, *, steps: int, episode: int, episode_step: int, episode_return: float,
                success: bool, reward: float = 0.0, weights_version: int = -1,
                weights_age_s: float | None = None) -> None:
        now = time.monotonic()
        if now - self._refreshed > self.REFRESH_S:
            self._refreshed = now
            if self.learner_status is not None:
                self.hub.publish_learner(read_status(self.learner_status))
            self.health = {name: _health(arm) for name, arm in self.arms.items()}
        self.hub.publish(StepView(
            step=steps, episode=episode, episode_step=episode_step, reward=reward, episode_return=episode_return,
            success=success, acting=acting, frames=(frames := _frames(obs)), full_frames=self._full_frames(frames),
            arms={name: self._arm_view(name, arm) for name, arm in self.arms.items()},
            weights_version=weights_version, weights_age_s=weights_age_s,
        ))

    def _arm_view(self, name: str, arm: FrankaEnv) -> ArmView:
        state = arm.state
        guard = dict(self.health.get(name, {}))
        if state is None:
            return ArmView(guard=guard, safety_box=self.safety_boxes[name])
        guard["errors"] = list(state.errors)
        guard["safety_stop"] = any(map(is_safety_stop_error, state.errors)) or bool(self.stopped)
        return ArmView(tcp_pose=[float(v) for v in state.tcp_pose], target_pose=[float(v) for v in state.target_pose],
                       gripper=float(state.gripper_width), guard=guard, safety_box=self.safety_boxes[name])

    def _full_frames(self, policy: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The cameras' full frames where they differ from what the policy sees (a crop or a resize); a pair's
        cameras are named ``arm/camera`` as in its observation."""
        full = {(name if arm == ONE_ARM else arm_key(arm, name)): np.asarray(frame)
                for arm, env in self.arms.items() for name, (frame, _) in env.camera_frames.items()}
        return {name: frame for name, frame in full.items()
                if name not in policy or frame.shape != policy[name].shape}

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def _box_json(box) -> dict[str, list[float]] | None:
    return None if box is None else {"low": [float(v) for v in box.position_low],
                                     "high": [float(v) for v in box.position_high]}


def _health(arm: FrankaEnv) -> dict:
    """An arm's watchdog and safety state (once a second: over HTTP it is a round trip)."""
    client = arm.client
    source = getattr(client, "health", None) or getattr(getattr(client, "guard", None), "health", None)
    if source is None:
        return {}
    try:
        health = source()
    except (RuntimeError, ConnectionError, OSError, NotImplementedError):
        return {}
    return {key: health[key] for key in ("ok", "watchdog", "safety", "joint_reset_running") if key in health}


def _frames(obs) -> dict[str, np.ndarray]:
    """The camera images of an observation, flat (``{cam: img}``) or nested (``{"images": {...}}``)."""
    if not isinstance(obs, dict):
        return {}
    images = obs.get("images") if isinstance(obs.get("images"), dict) else obs
    return {name: image for name, image in images.items()
            if isinstance(image, np.ndarray) and image.ndim == 3 and image.dtype == np.uint8}


def _recover(env) -> None:
    """Clear the robot's error state (safety stop, reflex) before the next reset, when the client can."""
    base = robot_env_under(env)
    if base is None:
        return
    try:
        base.recover()
    except (RuntimeError, ConnectionError, OSError) as err:
        print(f"[actor] recover failed: {err}", flush=True)


class Notices:
    """Console lines that repeat at most once per ``every`` s each: a robot held for hours must not flood the log."""

    def __init__(self):
        self._said: dict[str, float] = {}

    def say(self, key: str, text: str, every: float) -> bool:
        now = time.monotonic()
        if key in self._said and now - self._said[key] < every:
            return False
        self._said[key] = now
        print(f"[actor] {text}", flush=True)
        return True


class WeightsSlot:
    """The weights the actor uses: swapped in between steps whenever the transport holds newer ones."""

    def __init__(self, notices: Notices | None = None):
        self.version = -1
        self.meta: dict[str, float] = {}
        self.received_at = 0.0
        self.at_step = 0
        self.gave_up = False
        self.refused = 0
        self.refused_since = 0  # refused versions newer than the weights in use
        self.bad_version = -1  # the version whose policy gave a non-finite action: the robot holds until newer ones
        self.first_sent_at: float | None = None
        self.notices = notices or Notices()
        self._blob = None

    def age(self, now: float) -> float | None:
        """Seconds since the weights in use arrived; None before the first."""
        return None if self.version < 0 else now - self.received_at

    def sent(self, now: float) -> None:
        """A transition acted with these weights went to the learner."""
        if self.first_sent_at is None:
            self.first_sent_at = now

    def stale(self, now: float, threshold: float) -> bool:
        """The learner said it trains, yet sent nothing newer for ``threshold`` s while transitions went out."""
        return bool(self.meta.get("training")) and self.first_sent_at is not None and now - self.first_sent_at > threshold

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
            self.refused += 1
            self.refused_since += 1
            going_on = f"acting on with version {self.version}" if self.version >= 0 else "waiting for good ones"
            self.notices.say("refused", f"ignoring weights version {version} ({self.refused} refused so far; "
                                        f"{going_on}): {err}", every=10.0)
            return agent
        self.version, self.received_at, self.at_step, self.gave_up = version, time.monotonic(), step, False
        self.first_sent_at, self.refused_since = None, 0
        return agent


def _wait_for_first_weights(client, weights: WeightsSlot, agent, cfg: ActorConfig, net: NetConfig,
                            stop: threading.Event, on_refused=lambda: None):
    """The learner's current weights (and, with them, its counters) before the first step; RuntimeError after
    ``cfg.weights_timeout`` s without any. Once weights arrived but were refused the learner is there: the wait
    goes on (robot untouched) until good ones arrive, calling ``on_refused`` after each refusal."""
    deadline = time.monotonic() + cfg.weights_timeout
    refused = weights.refused
    while weights.version < 0 and not stop.is_set():
        if weights.refused != refused:
            refused = weights.refused
            on_refused()
        if time.monotonic() > deadline and not weights.refused:
            raise RuntimeError(
                f"no weights from the learner at {net.host}:{net.port} within {cfg.weights_timeout:.0f} s; "
                "is it running (see its log), and do both sides use the same env and agent options?")
        agent = weights.apply_newest(client, agent, 0)
        time.sleep(0.01)
    return agent


def _hold_reason(weights: WeightsSlot, cfg: ActorConfig, now: float) -> str:
    """Why the robot holds this period ("" to act); warns about stale weights and failing learner checkpoints."""
    stale = weights.stale(now, cfg.stale_weights_s)
    if stale:
        going_on = ("holding the robot until newer weights arrive" if cfg.pause_on_stale_weights
                    else f"acting on with weights version {weights.version}")
        refused = f" ({weights.refused_since} newer versions refused)" if weights.refused_since else ""
        weights.notices.say("stale", f"WARNING: no new weights for {weights.age(now):.0f} s{refused} although the "
                                     f"learner said it trains and transitions went out (stale_weights_s="
                                     f"{cfg.stale_weights_s:g}): is the learner stuck or gone? {going_on}",
                            every=cfg.stale_weights_s)
    if weights.meta.get("checkpoint_failing") == 1.0:
        weights.notices.say("checkpoint", "WARNING: learner reports failing checkpoints (see its log)",
                            every=cfg.stale_weights_s)
    if weights.version == weights.bad_version:
        return f"weights version {weights.version} gave a non-finite action; waiting for newer weights"
    if stale and cfg.pause_on_stale_weights:
        return f"the weights (version {weights.version}) are stale; waiting for newer weights"
    return ""


def _hold(env) -> None:
    """One control period without an env step, the robot's target unchanged: the target is sent again (a
    real-time robot's watchdog sees a live client), the period passes, and the state is read."""
    base = robot_env_under(env)
    if base is None or base.state is None:
        time.sleep(0.05)  # no robot to hold (a gym env): only wait
        return
    base.hold()
    if base.lockstep:
        time.sleep(base.period)  # a lockstep twin advances at once; newer weights take wall time


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
