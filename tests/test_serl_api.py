"""SERL's / HIL-SERL's robot-server API under /serl/ on a real-time twin over real HTTP.

``SerlStyleClient`` follows the call sequence of SERL's ``FrankaEnv`` (written here from its documented
contract: every route a POST, JSON bodies, status codes ignored by SERL, so the test checks them).
"""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest

pytest.importorskip("robot_servers.backends.twin")  # sets MUJOCO_GL before mujoco loads

from backend_episode import wait_for as _wait_until  # noqa: E402
from robot_servers.backends.twin import TwinBackend, TwinConfig  # noqa: E402
from robot_servers.control.impedance import CLIP_HIGH0, CLIP_LOW0  # noqa: E402
from robot_servers.control.pose import quat_multiply  # noqa: E402
from robot_servers.control.safety import SafetyBox  # noqa: E402
from robot_servers.http import ServerConfig, create_app  # noqa: E402
from robot_servers.http.serl_api import SerlApiConfig, map_update_param, serl_api, serl_quat  # noqa: E402
from robot_servers.backends.base import ImpedanceParams  # noqa: E402
from robot_servers.serve import ServeConfig, ServerThread, build_server  # noqa: E402

DOWN = np.array([1.0, 0.0, 0.0, 0.0])
BOX = SafetyBox(position_low=(0.2, -0.3, 0.1), position_high=(0.6, 0.3, 0.6),
                euler_low=(-0.3, -0.3, -1.0), euler_high=(0.3, 0.3, 1.0), center_quat=tuple(DOWN))
TILT = 0.1  # rad about x: a hand-down quaternion whose w is negative once x is made positive
COMPLIANCE = {"translational_stiffness": 2000, "translational_damping": 89, "rotational_stiffness": 150,
              "rotational_damping": 7, "translational_Ki": 0, "rotational_Ki": 0,
              **{f"translational_clip_{s}{a}": 0.01 for s in ("", "neg_") for a in "xyz"},
              **{f"rotational_clip_{s}{a}": 0.05 for s in ("", "neg_") for a in "xyz"}}
PRECISION = {**COMPLIANCE, "translational_stiffness": 3000, "rotational_stiffness": 250, "rotational_damping": 9}


def _tilted(angle: float) -> np.ndarray:
    """Hand down, turned ``angle`` rad about the base x axis (xyzw)."""
    return quat_multiply(np.array([np.sin(angle / 2), 0.0, 0.0, np.cos(angle / 2)]), DOWN)


def _serve(flavor="hil-serl", **config):
    backend = TwinBackend(TwinConfig(scene="empty", lockstep=False, cameras=()))
    config.setdefault("safety_box", BOX)
    config.setdefault("on_violation", "reject")
    app = create_app(backend, {}, ServerConfig(**config), [serl_api(SerlApiConfig(flavor=flavor))])
    return backend, ServerThread(app).start()


@pytest.fixture(scope="module")
def served():
    backend, server = _serve()
    client = httpx.Client(base_url=server.url + "/serl", timeout=30)
    yield backend, server, client
    client.close()
    server.stop()
    backend.close()




def _settle_at(client, backend, pose, timeout=15.0) -> None:
    """Send ``pose`` at 10 Hz until the arm rests there."""
    def there():
        client.post("/pose", json={"arr": list(map(float, pose))})
        state = backend.state()
        turned = 2 * np.arccos(min(1.0, abs(float(np.dot(state.tcp_pose[3:], pose[3:])))))
        return (np.linalg.norm(state.tcp_pose[:3] - pose[:3]) < 3e-3 and turned < 0.01
                and np.linalg.norm(state.tcp_vel) < 0.01)
    assert _wait_until(there, timeout)


class SerlStyleClient:
    """What SERL's FrankaEnv does over HTTP: reset via update_param ×2 and a component-wise
    interpolation of clearerr + pose, steps of gripper, clearerr, pose, getstate at 10 Hz."""

    def __init__(self, url: str, flavor: str, hz: float = 10.0):
        self.http = httpx.Client(base_url=url, timeout=30)
        self.flavor, self.hz = flavor, hz
        self.trace: list[tuple[str, int]] = []
        self.currpos = np.zeros(7)
        self.gripper_pos = 0.0

    def post(self, route: str, body=None) -> httpx.Response:
        response = self.http.post(route, json=body)
        self.trace.append((route, response.status_code))
        return response

    def update_currpos(self) -> None:
        state = self.post("getstate").json()
        self.currpos[:] = state["pose"]
        np.reshape(state["jacobian"], (6, 7))
        self.gripper_pos = float(state["gripper_pos"])

    def send_pos(self, pose) -> None:
        self.post("clearerr")
        self.last_sent = np.asarray(pose, np.float32)
        self.post("pose", {"arr": self.last_sent.tolist()})

    def gripper(self, action: float) -> None:
        is_open = self.gripper_pos > (0.85 if self.flavor == "hil-serl" else 0.07)
        if action <= -0.9 and is_open:
            self.post("close_gripper")
        elif action >= 0.9 and not is_open:
            self.post("open_gripper")

    def reset(self, reset_pose, steps: int = 15) -> None:
        self.post("update_param", COMPLIANCE)
        self.post("update_param", PRECISION)
        time.sleep(0.5)
        self.update_currpos()
        for pose in np.linspace(self.currpos, reset_pose, steps):  # component-wise, quaternion included
            self.send_pos(pose)
            time.sleep(1.0 / self.hz)
        self.update_currpos()

    def step(self, delta_xyz, gripper_action: float) -> None:
        start = time.monotonic()
        target = self.currpos.copy()
        target[:3] += delta_xyz
        self.gripper(gripper_action)
        self.send_pos(target)
        time.sleep(max(0.0, 1.0 / self.hz - (time.monotonic() - start)))
        self.update_currpos()


@pytest.mark.parametrize("flavor", ["serl", "hil-serl"])
def test_serl_style_client_resets_from_a_mixed_sign_start_and_steps(flavor):
    backend, server = _serve(flavor)
    try:
        raw = httpx.Client(base_url=server.url + "/serl", timeout=30)
        start = np.array([0.40, 0.05, 0.40, *_tilted(TILT)])
        _settle_at(raw, backend, start)
        reported = np.array(raw.post("/getstate").json()["pose"][3:])
        assert reported[0] > 0.9 and reported[3] < -0.02  # SERL's sign: w ≥ 0 would have flipped it
        assert backend.state().tcp_pose[3] < 0  # ... as our own API reports it
        raw.close()

        client = SerlStyleClient(server.url + "/serl/", flavor)
        reset_pose = np.array([0.45, -0.05, 0.30, *_tilted(-0.05)])
        client.reset(reset_pose)
        assert np.linalg.norm(client.currpos[:3] - reset_pose[:3]) < 0.01
        begin = client.currpos[:3].copy()
        open_scale = 1.0 if flavor == "hil-serl" else 0.08
        closed_seen = reopened = False
        for i in range(20):
            action = -1.0 if i < 10 else 1.0
            client.step(np.array([0.0, 0.006, -0.002]), action)
            closed_seen |= client.gripper_pos < 0.2 * open_scale
            reopened |= closed_seen and client.gripper_pos > 0.9 * open_scale
        assert _wait_until(lambda: np.linalg.norm(backend.state().tcp_vel[:3]) < 5e-3, 5.0)
        final = backend.state()
        assert np.linalg.norm(final.tcp_pose[:3] - begin) >= 0.05, (final.tcp_pose[:3], begin)
        assert np.linalg.norm(final.tcp_pose[:3] - final.target_pose[:3]) < 5e-3  # it ended where it was sent
        assert np.linalg.norm(client.last_sent[:3] - final.tcp_pose[:3]) < 5e-3
        assert closed_seen and _wait_until(lambda: backend.state().gripper_width > 0.9 * 0.08, 5.0)
        bad = [(route, code) for route, code in client.trace if code >= 400]
        assert not bad, bad
        routes = {route for route, _ in client.trace}
        assert {"update_param", "getstate", "clearerr", "pose", "close_gripper", "open_gripper"} <= routes
        client.http.close()
    finally:
        server.stop()
        backend.close()


def _snapshot(backend):
    state = backend.state()
    return state.target_pose.copy(), state.tcp_pose.copy(), state.gripper_width, backend.controller.params


NAN_POSE = '{"arr": [0.4, 0.0, 0.4, NaN, 0.0, 0.0, 0.0]}'
BAD_REQUESTS = [
    ("/pose", None, "arr", 422),
    ("/pose", {"pose": [0.4, 0, 0.4, *DOWN]}, "arr", 422),
    ("/pose", {"arr": [0.4, 0.0, 0.4, 1.0, 0.0, 0.0]}, "arr", 422),
    ("/pose", NAN_POSE, "arr", 422),
    ("/pose", {"arr": [0.4, 0.0, 0.4, 0.0, 0.0, 0.0, 0.0]}, "arr", 422),
    ("/pose", {"arr": [0.4, 0.0, 0.4, 0.02, 0.0, 0.0, -0.01]}, "arr", 422),  # mid-way between q and -q
    ("/pose", {"arr": [0.9, 0.0, 0.4, *DOWN]}, "pose", 422),  # outside the box (reject mode)
    ("/pose", {"arr": [0.4, "x", 0.4, *DOWN]}, "arr", 422),
    ("/pose", [0.4, 0.0, 0.4, *DOWN], "body", 422),
    ("/update_param", {"translational_stiffness": "stiff"}, "translational_stiffness", 422),
    ("/update_param", {"translational_stiffness": -100}, "translational_stiffness", 422),
    ("/update_param", '{"rotational_damping": NaN}', "rotational_damping", 422),
    ("/update_param", {"translational_clip_x": 0}, "translational_clip", 422),
    ("/update_param", {"translational_stiffness": 1000, "bogus": 1}, "bogus", 422),
    ("/update_param", {"translational_stiffness": True}, "translational_stiffness", 422),
    ("/move_gripper", None, "gripper_pos", 422),
    ("/move_gripper", {"gripper_pos": 300}, "gripper_pos", 422),
    ("/move_gripper", {"gripper_pos": "closed"}, "gripper_pos", 422),
    ("/set_load", {"mass": -1.0, "F_x_center_load": [0, 0, 0], "load_inertia": [0] * 9}, "mass", 422),
    ("/set_load", {"mass": 1.0, "F_x_center_load": [0, 0], "load_inertia": [0] * 9}, "F_x_center_load", 422),
    ("/set_load", {"mass": 1.0, "F_x_center_load": [0, 0, 0], "load_inertia": [0] * 9}, None, 501),
    ("/stopimp", None, None, 501),
]


@pytest.mark.parametrize("path,body,field,status", BAD_REQUESTS)
def test_bad_input_is_refused_with_a_message_and_the_arm_does_not_move(served, path, body, field, status):
    backend, _server, client = served
    _settle_at(client, backend, np.array([0.4, 0.0, 0.4, *DOWN]))
    target, pose, width, params = _snapshot(backend)
    if isinstance(body, str):
        response = client.post(path, content=body.encode(), headers={"content-type": "application/json"})
    else:
        response = client.post(path, json=body)
    assert response.status_code == status, response.text
    payload = response.json()
    message = payload.get("message") or payload.get("detail")
    assert isinstance(message, str) and message
    if field is not None:
        assert message.startswith(field) or f".{field}" in message or field in message, message
    after = backend.state()
    np.testing.assert_array_equal(after.target_pose, target)
    assert np.linalg.norm(after.tcp_pose[:3] - pose[:3]) < 1e-3
    assert after.gripper_width == pytest.approx(width, abs=1e-3)
    assert backend.controller.params == params


def test_getters_report_serl_conventions(served):
    backend, _server, client = served
    _settle_at(client, backend, np.array([0.4, 0.0, 0.4, *_tilted(TILT)]))
    state = client.post("/getstate").json()
    assert set(state) >= {"pose", "vel", "force", "torque", "q", "dq", "jacobian", "gripper_pos"}
    jacobian = np.array(state["jacobian"])
    assert jacobian.shape == (6, 7) and state["jacobian_available"]
    np.testing.assert_allclose(jacobian, backend.jacobian(), atol=1e-3)
    quat = np.array(state["pose"][3:])
    assert quat[np.argmax(np.abs(quat))] > 0 and quat[3] < 0
    for route, key, size in [("getpos", "pose", 7), ("getvel", "vel", 6), ("getforce", "force", 3),
                             ("gettorque", "torque", 3), ("getq", "q", 7), ("getdq", "dq", 7),
                             ("getjacobian", "jacobian", 6), ("getpos_euler", "pose", 6), ("get_gripper", "gripper", None)]:
        answer = client.post(f"/{route}")
        assert answer.status_code == 200 and list(answer.json()) == [key], route
        if size is not None:
            assert len(answer.json()[key]) == size, route
    euler = client.post("/getpos_euler").json()["pose"][3:]
    assert abs(abs(euler[0]) - (np.pi - TILT)) < 0.01
    assert client.get("/getstate").status_code == 405  # SERL's routes are POST


def test_either_quaternion_sign_reaches_the_same_target(served):
    backend, _server, client = served
    pose = np.array([0.42, 0.02, 0.38, *_tilted(TILT)])
    assert client.post("/pose", json={"arr": pose.tolist()}).text == "Moved"
    first = backend.state().target_pose.copy()
    assert client.post("/pose", json={"arr": [*pose[:3], *(-pose[3:])]}).text == "Moved"
    np.testing.assert_allclose(backend.state().target_pose, first)


def test_serl_quat_sign_rule():
    np.testing.assert_allclose(serl_quat([-0.9, 0.1, 0.0, 0.3]), [0.9, -0.1, 0.0, -0.3])
    np.testing.assert_allclose(serl_quat([0.1, 0.2, -0.3, -0.9]), [-0.1, -0.2, 0.3, 0.9])


def test_update_param_is_partial_and_maps_integral_and_asymmetric_clips(served):
    backend, _server, client = served
    client.post("/update_param", json=COMPLIANCE)
    before = backend.controller.params
    answer = client.post("/update_param", json={"rotational_stiffness": 200, "translational_clip_z": 0.02,
                                                "translational_clip_neg_z": 0.015, "rotational_Ki": 0.5})
    assert answer.status_code == 200 and answer.text == "Updated compliance parameters"
    after = backend.controller.params
    np.testing.assert_allclose(after.rotational_stiffness, [200] * 3)
    np.testing.assert_allclose(after.translational_stiffness, before.translational_stiffness)
    np.testing.assert_allclose(after.translational_clip, [0.01, 0.01, 0.02])
    np.testing.assert_allclose(after.translational_clip_neg, [0.01, 0.01, 0.015])
    assert after.rotational_clip_neg is None  # both sides equal: the symmetric law
    np.testing.assert_allclose(after.rotational_ki, [0.5] * 3)
    np.testing.assert_allclose(after.translational_ki, [0.0] * 3)
    np.testing.assert_allclose(after.translational_damping, [89] * 3)
    low, high = after.clip_bounds()  # what the twin's law now clips to
    np.testing.assert_allclose(backend.controller.gains[CLIP_LOW0:CLIP_HIGH0 + 6], np.r_[low, high])
    assert client.post("/update_param", json=COMPLIANCE).status_code == 200  # SERL's defaults for the next tests
    assert backend.controller.params.rotational_clip_neg is None and not np.any(backend.controller.params.rotational_ki)


@pytest.mark.parametrize("body, field", [({"translational_Ki": -1}, "translational_ki"),
                                         ({"rotational_Ki": 1e3}, "rotational_ki"),
                                         ({"translational_clip_neg_x": 0}, "translational_clip_neg"),
                                         ({"rotational_Ki": "high"}, "rotational_Ki")])
def test_update_param_refuses_bad_integral_or_clip_and_changes_nothing(served, body, field):
    backend, _server, client = served
    before = backend.controller.params.to_dict()
    answer = client.post("/update_param", json=body)
    assert 400 <= answer.status_code < 500 and field in answer.text
    assert backend.controller.params.to_dict() == before


def test_map_update_param_keeps_unsent_fields_and_each_clip_side():
    current = ImpedanceParams(translational_clip_neg=(0.02, 0.01, 0.01)).validate()
    params = map_update_param(current, {"nullspace_stiffness": 1.0, "translational_clip_x": 0.03})
    assert params.nullspace_stiffness == 1.0
    np.testing.assert_allclose(params.translational_stiffness, current.translational_stiffness)
    np.testing.assert_allclose(params.translational_clip, [0.03, 0.01, 0.01])
    np.testing.assert_allclose(params.translational_clip_neg, [0.02, 0.01, 0.01])  # SERL's sides are separate
    params = map_update_param(current, {"translational_clip_neg_x": 0.01})
    assert params.translational_clip_neg is None  # equal sides again


def test_clearerr_clears_arm_errors_but_never_the_safety_stop():
    box = SafetyBox(position_low=(0.2, -0.3, 0.3), position_high=(0.6, 0.3, 0.6), center_quat=tuple(DOWN))
    backend, server = _serve(safety_box=box, on_violation="clip", watchdog_timeout=None)
    try:
        client = httpx.Client(base_url=server.url, timeout=30)
        backend._errors.append("simulated driver fault")  # an arm error the backend reports
        assert client.post("/serl/clearerr").text == "Clear"
        assert backend.state().errors == []
        backend.set_target([0.307, 0.0, 0.2, *DOWN])  # something outside the server drags the arm down
        assert _wait_until(lambda: client.get("/health").json()["safety"]["stopped"], 10.0)
        answer = client.post("/serl/clearerr")
        assert answer.status_code == 409 and "/recover" in answer.json()["detail"]
        assert client.get("/health").json()["safety"]["stopped"]
        held = backend.state().target_pose.copy()
        assert client.post("/serl/pose", json={"arr": [0.4, 0.0, 0.4, *DOWN]}).status_code == 409
        np.testing.assert_array_equal(backend.state().target_pose, held)
        assert client.post("/recover").status_code == 200
        assert client.post("/serl/pose", json={"arr": [0.4, 0.0, 0.4, *DOWN]}).status_code == 200
        client.close()
    finally:
        server.stop()
        backend.close()


def test_jointreset_and_gripper_routes(served):
    backend, _server, client = served
    _settle_at(client, backend, np.array([0.42, 0.05, 0.35, *DOWN]))
    assert client.post("/jointreset").text == "Reset Joint"
    np.testing.assert_allclose(backend.state().q, backend.home_q, atol=2e-3)
    assert client.post("/move_gripper", json={"gripper_pos": 255}).status_code == 200
    assert _wait_until(lambda: backend.state().gripper_width < 0.005, 5.0)
    assert client.post("/open_gripper").text == "Opened"
    assert _wait_until(lambda: client.post("/get_gripper").json()["gripper"] > 0.95, 5.0)  # hil-serl: 1 = open
    assert client.post("/close_gripper_slow").text == "Closed"
    assert _wait_until(lambda: client.post("/get_gripper").json()["gripper"] < 0.05, 5.0)
    assert client.post("/open_gripper").status_code == 200
    for route in ("activate_gripper", "reset_gripper", "startimp"):
        assert client.post(f"/{route}").status_code == 200


def test_token_keeps_the_serl_routes_off_unless_allowed(monkeypatch):
    with pytest.raises(ValueError, match="--serl-api-without-token"):
        serl_api(SerlApiConfig(), token="s3cret")
    with pytest.raises(ValueError, match="--serl-api-without-token"):
        build_server(ServeConfig(serl_api=True, token="s3cret"))
    with pytest.raises(ValueError, match="real-time"):
        build_server(ServeConfig(serl_api=True, lockstep=True))
    backend = TwinBackend(TwinConfig(scene="empty", lockstep=False, cameras=()))
    app = create_app(backend, {}, ServerConfig(token="s3cret"),
                     [serl_api(SerlApiConfig(allow_without_token=True), token="s3cret")])
    try:
        with ServerThread(app) as server:
            assert httpx.post(server.url + "/serl/getpos").status_code == 200
            assert httpx.get(server.url + "/state").status_code == 401
            assert httpx.get(server.url + "/state", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    finally:
        backend.close()


def test_build_server_mounts_the_serl_routes():
    app, backend, _cameras = build_server(ServeConfig(serl_api=True, serl_api_flavor="serl", option=("scene=empty",)))
    try:
        with ServerThread(app) as server:
            state = httpx.post(server.url + "/serl/getstate").json()
            assert state["gripper_pos"] == pytest.approx(0.08, abs=1e-3)  # serl flavor: metres
            assert httpx.get(server.url + "/health").json()["ok"]
    finally:
        backend.close()


def test_serve_flags_parse():
    import tyro

    config = tyro.cli(ServeConfig, args=["--serl-api", "--serl-api-flavor", "serl"])
    assert config.serl_api and config.serl_api_flavor == "serl" and not config.serl_api_without_token
    assert json.dumps(ServeConfig().serl_api_flavor) == '"hil-serl"'
