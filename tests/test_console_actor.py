"""The actor with the training console on: what it publishes, and the page's commands acting on the robot and the data.

One in-process ``run_actor`` on a served twin (lockstep, one small camera) for the module, with its console page
on a free port and the test holding its hub; the learner's transport (``LearnerServer``) gets hand-made weights
and records every transition. The test reads the twin's pose over HTTP, independently of the actor.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("robot_servers.backends.twin")  # sets MUJOCO_GL before mujoco loads

import httpx

from robot_servers.http import ServerConfig, create_app
from robot_servers.serve import ServerThread
from serl.agents.sac import SACConfig
from serl.console.hub import ConsoleHub
from serl.console.server import ConsoleConfig
from serl.devices.base import TeleopCommand
from serl.envs.franka_env import franka_env_under
from serl.envs.http_client import HttpRobotClient
from serl.envs.intervention import InterventionWrapper
from serl.envs.task_config import CameraSpec
from serl.envs.tasks import list_tasks, register_task
from serl.runtime.actor import run_actor
from serl.runtime.config import ActorConfig, EnvConfig, RunConfig, run_config_hash
from serl.runtime.envs import build_env, observation_example
from serl.runtime.policy import create_agent, encode_weights
from serl.transport.learner_server import LearnerServer, LearnerServerConfig

sys.path.insert(0, str(Path(__file__).parent))
import runtime_reach_task  # noqa: E402  (registers PandaReach)
from backend_episode import wait_value  # noqa: E402

TASK = "PandaReachCam"
if TASK not in list_tasks():
    register_task(dataclasses.replace(runtime_reach_task.REACH, name=TASK, scene_objects=(),
                                      cameras=(CameraSpec("front", size=(32, 32)),)),
                  lambda task: runtime_reach_task.ReachReward())
AGENT = SACConfig(hidden_dims=(16, 16), encoder="small", encoder_latent_dim=16)
RIGHT = TeleopCommand.move([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])


class Tee:
    """The actor's prints, kept for the test and passed on."""

    def __init__(self, stream):
        self.stream, self.text, self._lock = stream, [], threading.Lock()

    def write(self, data):
        with self._lock:
            self.text.append(data)
        return self.stream.write(data)

    def flush(self):
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def value(self) -> str:
        with self._lock:
            return "".join(self.text)


class Rig:
    """A served twin, a learner transport that records every transition, and ``run_actor`` on a thread."""

    def __init__(self, tmp_path: Path):
        env = build_env(EnvConfig(task=TASK), seed=0, teleop="browser", console=ConsoleHub())
        assert isinstance(env, InterventionWrapper)
        env.reset(seed=0)
        self.expected_human_action = env.teleop_to_action(RIGHT)  # what the actor's wrapper makes of RIGHT
        base = franka_env_under(env)
        self.backend = base.client.backend
        self.robot_server = ServerThread(create_app(self.backend, base.client.cameras,
                                                    ServerConfig(safety_box=base.task.safety_box))).start()
        self.robot = HttpRobotClient(self.robot_server.url)
        self.env_cfg = EnvConfig(task=TASK, robot_url=self.robot_server.url)
        self.server = LearnerServer(LearnerServerConfig(request_port=0, weights_port=0,
                                                        config_hash=run_config_hash(self.env_cfg, AGENT))).start()
        self.transitions: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        agent = create_agent(0, observation_example(env), int(np.prod(env.action_space.shape)), AGENT)
        self.server.publish_weights(encode_weights(agent, {"env_steps": 0, "episodes": 0, "updates": 0, "backlog": 0,
                                                           "training": 0.0}), 0)
        self.hub = ConsoleHub(teleop_timeout_s=0.5)
        self.run_dir = tmp_path / "run"
        cfg = ActorConfig(env=self.env_cfg, agent=AGENT, run=RunConfig(root=tmp_path, name="run", logger="none"),
                          quiet=True, weights_timeout=120.0, console=ConsoleConfig(port=0))
        cfg = dataclasses.replace(cfg, net=dataclasses.replace(cfg.net, port=self.server.request_port,
                                                               weights_port=self.server.weights_port))
        self.actor_stop = threading.Event()
        self.out = Tee(sys.stdout)
        self.error: BaseException | None = None
        self.actor = threading.Thread(target=self._run, args=(cfg,), daemon=True)
        self.actor.start()

    def _run(self, cfg: ActorConfig) -> None:
        try:
            previous, sys.stdout = sys.stdout, self.out
            try:
                run_actor(cfg, self.run_dir, self.actor_stop, hub=self.hub)
            finally:
                sys.stdout = previous
        except BaseException as err:  # noqa: BLE001 - reported by wait_for
            self.error = err

    def _drain(self) -> None:
        while not self._stop.is_set():
            for batch in self.server.drain(timeout=0.05):
                with self._lock:
                    self.transitions.extend(batch.transitions)

    def received(self) -> list[dict]:
        with self._lock:
            return list(self.transitions)

    def view(self):
        return self.hub.latest()[1]

    def views_after(self, count: int, acting: str | None = None, timeout: float = 30.0):
        """Wait until ``count`` more steps were published (with ``acting`` when given); the newest view."""
        seen = 0
        seq = self.hub.latest()[0]
        deadline = time.monotonic() + timeout
        while seen < count:
            self.check_alive()
            assert time.monotonic() < deadline, f"timed out waiting for {count} published steps ({acting})"
            newer, view, _ = self.hub.wait_newer(seq, 0.5)
            if newer > seq and (acting is None or view.acting == acting):
                seen += 1
            seq = newer
        return view

    def check_alive(self) -> None:
        if self.error is not None:
            raise AssertionError(f"the actor failed: {self.error!r}\n{self.out.value()[-3000:]}")
        assert self.actor.is_alive(), f"the actor stopped:\n{self.out.value()[-3000:]}"

    def wait_for(self, predicate, what: str, timeout: float = 30.0):
        return wait_value(predicate, what, timeout, alive=self.check_alive, log=self.out.value)

    def episodes(self) -> list[dict]:
        path = self.run_dir / "episodes.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def close(self) -> None:
        self.actor_stop.set()
        self.actor.join(30)
        self._stop.set()
        self._drainer.join(5)
        self.server.close()
        self.robot.close()
        self.robot_server.stop()
        self.backend.close()


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    rig = Rig(tmp_path_factory.mktemp("console"))
    rig.wait_for(lambda: len(rig.received()) >= 5, "the first transitions", timeout=120.0)
    yield rig
    rig.close()
    assert rig.error is None, repr(rig.error)


def test_the_address_is_printed_and_steps_are_published_with_frames(rig):
    line = rig.wait_for(lambda: [l for l in rig.out.value().splitlines() if l.startswith("console: ")], "the address")
    url = line[0][len("console: "):]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/")
    assert httpx.get(url, timeout=10.0).status_code == 200
    assert json.loads((rig.run_dir / "status" / "actor.json").read_text())["console"] == url
    view = rig.views_after(3, acting="policy")
    assert set(view.frames) == {"front"} and view.frames["front"].shape == (32, 32, 3)
    assert view.frames["front"].dtype == np.uint8 and view.frames["front"].any()
    (arm,) = view.arms.values()
    assert len(arm.tcp_pose) == 7 and len(arm.target_pose) == 7 and arm.gripper is not None
    assert arm.safety_box is not None and len(arm.safety_box["low"]) == 3
    assert view.weights_version == 0 and view.weights_age_s is not None
    assert "safety" in arm.guard and arm.guard["safety_stop"] is False
    assert view.episode >= 1 and 0 <= view.episode_step <= 25


def test_pause_holds_the_pose_and_sends_nothing_until_resume(rig):
    rig.hub.command("pause")
    try:
        paused = rig.views_after(3, acting="paused")
        rig.wait_for(lambda: len(rig.received()) == paused.step, "every transition sent before the pause")
        sent = len(rig.received())
        state = rig.robot.state()
        pose, target = np.asarray(state.tcp_pose, float)[:3], np.asarray(state.target_pose, float)
        rig.views_after(10, acting="paused")  # ten held control periods
        state = rig.robot.state()
        np.testing.assert_allclose(state.target_pose, target, atol=1e-6)  # the target holds
        # the arm only settles onto that target (a step's motion may still be ending when the pause comes)
        before, after = (np.linalg.norm(p - target[:3]) for p in (pose, np.asarray(state.tcp_pose)[:3]))
        assert after <= before + 1e-3, (before, after)
        assert len(rig.received()) == sent and rig.view().step == paused.step
    finally:
        rig.hub.command("resume")  # the rig is shared by the tests after this one
    rig.wait_for(lambda: len(rig.received()) >= sent + 5, "transitions after resume")


def test_mark_success_ends_the_episode_with_reward_one(rig):
    before = len(rig.received())
    logged = len(rig.episodes())
    rig.hub.command("mark_success")
    marked = rig.wait_for(lambda: [t for t in rig.received()[before:] if t["rewards"] == 1.0 and t["dones"]],
                          "the marked transition")
    assert marked[0]["masks"] == 0.0  # terminated, not truncated
    episode = rig.wait_for(lambda: [e for e in rig.episodes()[logged:] if e.get("episode/success") == 1.0],
                           "the successful episode in episodes.jsonl")[0]
    assert episode["episode/return"] >= 1.0 - 5.0 * 25  # the last step's reward is the mark's 1


def test_discard_marks_the_last_episode(rig):
    rig.wait_for(lambda: [e for e in rig.episodes() if "episode" in e], "a finished episode")
    rig.hub.command("discard")
    marker = rig.wait_for(lambda: [e for e in rig.episodes() if "discarded" in e], "the discard line")[-1]
    finished = [e["episode"] for e in rig.episodes() if "episode" in e]
    assert marker["discarded"] in finished


def test_browser_teleop_is_recorded_as_an_intervention_and_hands_back_on_timeout(rig):
    assert rig.hub.claim_teleop("page")
    feeding = threading.Event()
    feeding.set()

    def feed():
        while feeding.is_set():
            rig.hub.teleop_input("page", TeleopCommand.move(RIGHT.twist))
            time.sleep(0.05)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        before = len(rig.received())
        def intervened():
            found = [t for t in rig.received()[before:] if t.get("intervened")]
            return found if len(found) >= 5 else None

        human = rig.wait_for(intervened, "intervened transitions")
        for transition in human:
            np.testing.assert_allclose(transition["actions"], rig.expected_human_action, atol=2e-3)  # reset frames differ slightly
        assert rig.views_after(1, acting="human").acting == "human"
    finally:
        feeding.clear()
        feeder.join(5)
    stopped_at = len(rig.received())
    rig.wait_for(lambda: len([t for t in rig.received()[stopped_at:] if not t.get("intervened")]) >= 5,
                 "the policy acting again after the teleop timeout")
    assert rig.views_after(1, acting="policy").acting == "policy"
    rig.hub.release_teleop("page")


def paused_early_in_an_episode(rig, before_step: int = 20):
    """Pause at a step of an episode well before its time limit; the paused view."""
    while True:
        rig.hub.command("pause")
        view = rig.views_after(2, acting="paused")
        if 1 <= view.episode_step < before_step:
            return view
        rig.hub.command("resume")
        rig.views_after(3, acting="policy")


@pytest.mark.parametrize("command", ["mark_failure", "end_episode"])
def test_failure_and_end_episode_truncate_on_the_next_step(rig, command):
    view = paused_early_in_an_episode(rig)
    rig.wait_for(lambda: len(rig.received()) == view.step, "every transition sent before the pause")
    sent = len(rig.received())
    rig.hub.command(command)
    rig.hub.command("resume")
    last = rig.wait_for(lambda: len(rig.received()) > sent and rig.received()[sent], "the next transition")
    assert last["dones"] and last["masks"] == 1.0  # truncated: SAC bootstraps through it
    episode = rig.wait_for(lambda: [e for e in rig.episodes() if e.get("episode") == view.episode], "the episode")[0]
    assert episode["episode/length"] == view.episode_step + 1 and episode["episode/success"] == 0.0


def test_safety_stop_sends_nothing_until_recover(rig):
    rig.views_after(2, acting="policy")
    rig.hub.command("safety_stop")
    stopped = rig.views_after(3, acting="paused")
    assert stopped.arms["robot"].guard["safety_stop"]
    rig.wait_for(lambda: len(rig.received()) == stopped.step, "every transition sent before the stop")
    sent = len(rig.received())
    target = np.asarray(rig.robot.state().target_pose)
    rig.views_after(5, acting="paused")
    assert len(rig.received()) == sent
    np.testing.assert_allclose(rig.robot.state().target_pose, target, atol=1e-6)
    rig.hub.command("recover")
    after = rig.views_after(1, acting="policy")
    assert after.episode_step == after.step - stopped.step  # the interrupted episode was dropped: a new one began
    rig.wait_for(lambda: len(rig.received()) >= sent + 5, "transitions after recover")


def test_browser_teleop_reads_the_page_or_idle():
    from serl.devices import make_teleop

    hub = ConsoleHub(teleop_timeout_s=0.2)
    teleop = make_teleop("browser", hub=hub)
    assert not teleop.read().active
    assert hub.claim_teleop("page") and hub.teleop_input("page", RIGHT)
    assert teleop.read().active and teleop.read().twist[0] == 1.0
    deadline = time.monotonic() + 5.0
    while teleop.read().active:  # stale input hands back
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with pytest.raises(ValueError, match="hub"):
        make_teleop("browser")


def test_record_demos_takes_the_page_commands_as_its_keys():
    from types import SimpleNamespace

    from serl.cli.record_demos import Controls

    hub, calls = ConsoleHub(), []
    console = SimpleNamespace(hub=hub, safety_stop=lambda: calls.append("stop"), recover=lambda: calls.append("recover"))
    controls = Controls("scripted", None, console)
    for name in ("mark_success", "discard", "safety_stop", "recover", "pause"):
        hub.command(name)
    assert controls.keys({}) == {"enter", "backspace"} and calls == ["stop", "recover"]
    hub.command("mark_failure")
    assert controls.keys({}) == {"n"}


def test_serl_train_prints_the_actors_console_address_once(tmp_path, capsys):
    from serl.runtime.logging import TrainProgress, write_status

    progress = TrainProgress(tmp_path, 100, live=False, console_token="secret")
    progress.update()
    write_status(tmp_path / "status" / "actor.json", {"console": "http://127.0.0.1:8765/", "phase": "waiting"})
    progress.update()
    progress.update()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("console: ")]
    assert lines == ["console: http://127.0.0.1:8765/?token=secret"]


def test_record_demos_with_the_console_page_keeps_a_browser_driven_success(tmp_path):
    """The page's own protocol (a WebSocket) drives ``serl record-demos --console --teleop browser``."""
    websockets_client = pytest.importorskip("websockets.sync.client")
    from serl.cli.record_demos import RecordDemosConfig, record_demos
    from serl.data.episodes import read_episodes

    out = tmp_path / "demos.h5"
    with socket.socket() as probe:  # a free port, so that the page's address is known without reading stdout
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = RecordDemosConfig(task="PandaReach", n=1, teleop="browser", out=out, console=True, console_port=port,
                            display=False)
    failure: list[BaseException] = []

    def record():
        try:
            record_demos(cfg)
        except BaseException as err:  # noqa: BLE001 - reported below
            failure.append(err)

    recorder = threading.Thread(target=record, daemon=True)
    recorder.start()
    from websockets.exceptions import ConnectionClosed

    deadline = time.monotonic() + 60.0
    while True:
        assert time.monotonic() < deadline and not failure, f"the console did not start: {failure}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=5.0).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    try:
        with websockets_client.connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
            ws.send(json.dumps({"type": "claim_teleop"}))
            for _ in range(10):  # a second of input: the arm moves down
                ws.send(json.dumps({"type": "teleop", "twist": [0, 0, -0.5, 0, 0, 0], "gripper": None,
                                    "active": True}))
                time.sleep(0.1)
            ws.send(json.dumps({"type": "command", "name": "mark_success"}))
            recorder.join(30)
    except ConnectionClosed:  # the recorder kept its one episode and closed the page's server
        pass
    recorder.join(30)
    assert not recorder.is_alive() and not failure, failure
    (episode,) = read_episodes(out)
    assert episode.attrs["success"] and episode.succeed[-1] and episode.rewards[-1] == 1.0
    assert episode.intervened.sum() >= 3
