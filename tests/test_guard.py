"""One guard on every path: the same bad commands are refused identically in-process (``LocalRobot``)
and over HTTP (``HttpRobotClient`` and raw requests), and the arm does not move."""

import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from robot_servers.backends.base import Backend, ImpedanceParams  # noqa: E402
from robot_servers.backends.twin import TwinBackend, TwinConfig  # noqa: E402
from robot_servers.control.pose import DOWN_QUAT as DOWN  # noqa: E402
from robot_servers.control.safety import SafetyBox  # noqa: E402
from robot_servers.guard import (  # noqa: E402
    CommandRejected,
    GuardConfig,
    NotSupported,
    RobotGuard,
    SafetyStopActive,
)
from robot_servers.http import ServerConfig, create_app  # noqa: E402
from robot_servers.serve import ServerThread  # noqa: E402
from serl.envs.http_client import HttpRobotClient  # noqa: E402
from serl.envs.robot_client import LocalRobot  # noqa: E402

BOX = SafetyBox(position_low=(0.3, -0.2, 0.1), position_high=(0.6, 0.2, 0.5), center_quat=tuple(DOWN))
NAN = float("nan")

# (what, RobotClient method, args, the field the refusal names)
BAD_COMMANDS = [
    ("NaN pose", "set_target", ([0.4, 0.0, NAN, *DOWN],), "pose"),
    ("short pose", "set_target", ([0.4, 0.0, 0.3, 1.0, 0.0, 0.0],), "pose"),
    ("nested pose", "set_target", ([[0.4, 0.0, 0.3, *DOWN]],), "pose"),
    ("non-unit quaternion", "set_target", ([0.4, 0.0, 0.3, 2.0, 0.0, 0.0, 0.0],), "pose"),
    ("target outside the box", "set_target", ([0.9, 0.0, 0.3, *DOWN],), "pose"),
    ("gripper too wide", "set_gripper", (0.2,), "width"),
    ("NaN gripper", "set_gripper", (NAN,), "width"),
    ("stiffness too high", "set_impedance", (ImpedanceParams(translational_stiffness=(1e5, 1e5, 1e5)),),
     "translational_stiffness"),
    ("zero damping", "set_impedance", (ImpedanceParams(translational_damping=(0.0, 50.0, 50.0)),),
     "translational_damping"),
    ("zero rotational damping", "set_impedance", (ImpedanceParams(rotational_damping=(0.0, 0.0, 0.0)),),
     "rotational_damping"),
    ("joint out of range", "joint_reset", ([10.0, 0.0, 0.0, -2.0, 0.0, 2.0, 0.8],), "q"),
]


def _twin() -> TwinBackend:
    return TwinBackend(TwinConfig(scene="empty", lockstep=True, cameras=()))


@pytest.fixture(params=["in-process", "http"])
def robot(request):
    """A lockstep twin behind the guard in reject mode, reached in-process or over HTTP."""
    backend = _twin()
    config = dict(safety_box=BOX, on_violation="reject")
    if request.param == "in-process":
        client = LocalRobot(backend, guard=GuardConfig(**config))
        yield backend, client, None
        client.close()
        return
    server = ServerThread(create_app(backend, {}, ServerConfig(**config))).start()
    client = HttpRobotClient(server.url)
    yield backend, client, server.url
    client.close()
    server.stop()
    backend.close()


def _still(backend):
    state = backend.state()
    return state.tcp_pose.copy(), state.target_pose.copy(), state.gripper_width, state.timestamp


@pytest.mark.parametrize("what,method,args,field", BAD_COMMANDS, ids=[c[0] for c in BAD_COMMANDS])
def test_bad_commands_are_refused_alike_on_every_path_and_nothing_moves(robot, what, method, args, field):
    backend, client, _url = robot
    client.set_target([0.45, 0.0, 0.3, *DOWN])
    before = _still(backend)
    with pytest.raises(CommandRejected) as refused:
        getattr(client, method)(*args)
    assert refused.value.field == field, (what, str(refused.value))
    after = _still(backend)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_raw_requests_the_client_would_not_send_are_refused_by_the_server():
    backend = _twin()
    with ServerThread(create_app(backend, {}, ServerConfig(safety_box=BOX))) as server:
        before = _still(backend)
        bad = [("/target", '{"pose": [0.4, 0.0, NaN, 1, 0, 0, 0]}'),
               ("/gripper", '{"width": Infinity}'),
               ("/impedance", '{"translational_stiffness": [1e9, 0, 0]}'),
               ("/target", '{"pose": [0.4, 0.0, 0.3, 0, 0, 0, 0]}')]
        for path, body in bad:
            response = httpx.post(server.url + path, content=body, headers={"content-type": "application/json"})
            assert response.status_code == 422, (path, body, response.text)
        for a, b in zip(before, _still(backend)):
            np.testing.assert_array_equal(a, b)
    backend.close()


@pytest.mark.parametrize("path", ["in-process", "http"])
def test_clip_mode_gives_the_same_target_on_every_path(path):
    backend = _twin()
    outside = [0.9, -0.5, 0.0, *DOWN]
    if path == "in-process":
        client = LocalRobot(backend, guard=GuardConfig(safety_box=BOX))
        client.set_target(outside)
        target = client.state().target_pose
        client.close()
    else:
        with ServerThread(create_app(backend, {}, ServerConfig(safety_box=BOX))) as server:
            client = HttpRobotClient(server.url)
            client.set_target(outside)
            target = client.state().target_pose
            client.close()
        backend.close()
    np.testing.assert_allclose(target, BOX.clip(np.asarray(outside)))
    np.testing.assert_allclose(target[:3], [0.6, -0.2, 0.1])


def test_in_process_measured_pose_stop_latches_until_recover():
    backend = _twin()
    guard = RobotGuard(backend, GuardConfig(safety_box=SafetyBox(position_low=(0.2, -0.3, 0.3),
                                                                 position_high=(0.6, 0.3, 0.6),
                                                                 center_quat=tuple(DOWN))))
    guard.advance(0.1)  # arms the check: home is inside this box
    assert guard.armed
    backend.set_target([0.307, 0.0, 0.2, *DOWN])  # something outside the guard drags the arm below the floor
    guard.advance(1.5)
    assert guard.safety_stop is not None and "position z" in guard.safety_stop
    assert backend.state().target_pose[2] > 0.28  # held where it crossed, not at the 0.2 target
    assert "hold" == guard.state().controller_mode
    with pytest.raises(SafetyStopActive):
        guard.set_target([0.4, 0.0, 0.4, *DOWN])
    guard.recover()
    guard.set_target([0.4, 0.0, 0.4, *DOWN])
    backend.close()


def test_simulation_only_commands_are_refused_for_a_real_arm_backend():
    class ArmOnly(Backend):  # the plain Backend interface, as a real arm implements it
        name = "arm"

        def __init__(self, twin):
            self.twin = twin

        def state(self):
            return self.twin.state()

        def set_target(self, pose, gripper=None):
            self.twin.set_target(pose, gripper)

        def set_gripper(self, width):
            self.twin.set_gripper(width)

        def set_impedance(self, params):
            self.twin.set_impedance(params)

        def joint_reset(self, q=None, duration=3.0):
            self.twin.joint_reset(q, duration)

        def recover(self):
            self.twin.recover()

    twin = _twin()
    guard = RobotGuard(ArmOnly(twin), GuardConfig(safety_box=BOX, watchdog_timeout=None))
    for call in (lambda: guard.advance(0.1), lambda: guard.reset_scene(1), lambda: guard.reset_robot(), guard.scene):
        with pytest.raises(NotSupported):
            call()
    twin.close()


def test_training_on_the_twin_runs_the_task_guard():
    from serl.envs.tasks import make_sim_env

    env = make_sim_env("PandaPickCube", seed=0)
    try:
        guard = env.client.guard
        assert isinstance(guard, RobotGuard) and guard.config.safety_box == env.task.safety_box
        env.reset(seed=0)
        for _ in range(5):
            _obs, _r, _term, _trunc, info = env.step(np.r_[1.0, 1.0, -1.0, np.zeros(env.action_space.shape[0] - 3)])
        assert env.task.safety_box.contains(info["target_pose"], tolerance=1e-9)
    finally:
        env.close()


def test_joint_resets_from_inside_the_box_to_home_outside_it_never_stop_the_arm():
    """Real time, monitor thread running: home lies above this box, so every joint reset leaves it."""
    from robot_servers.franka import HOME_Q

    backend = TwinBackend(TwinConfig(scene="empty", lockstep=False, cameras=()))
    low_box = SafetyBox(position_low=(0.3, -0.2, 0.05), position_high=(0.7, 0.2, 0.35), center_quat=tuple(DOWN))
    robot = LocalRobot(backend, guard=GuardConfig(safety_box=low_box, watchdog_timeout=None))
    guard = robot.guard
    try:
        for _ in range(4):
            robot.set_target([0.5, 0.0, 0.25, *DOWN])
            deadline = time.monotonic() + 20.0
            while not guard.armed and time.monotonic() < deadline:
                robot.set_target([0.5, 0.0, 0.25, *DOWN])
                time.sleep(0.02)
            assert guard.armed, guard.health()
            robot.joint_reset(np.asarray(HOME_Q), duration=0.5)
            assert not low_box.contains(robot.state().tcp_pose, tolerance=0.01)  # home is outside the box
            time.sleep(0.1)  # the monitor runs at 100 Hz: give it several looks at the home pose
            assert guard.safety_stop is None, guard.safety_stop
    finally:
        robot.close()
