"""Fuzz the robot server from its own OpenAPI spec (schemathesis) against a real twin on loopback:
no 5xx ever, every status the spec lists for its route, and a rejected request never changes the
twin's target, gripper or clock."""

from __future__ import annotations

import copy

import httpx
import numpy as np
import pytest

pytest.importorskip("robot_servers.backends.twin")  # sets MUJOCO_GL before mujoco loads
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from robot_servers.backends.twin import TwinBackend, TwinConfig  # noqa: E402
from robot_servers.control.safety import SafetyBox  # noqa: E402
from robot_servers.http import ServerConfig, create_app  # noqa: E402
from robot_servers.serve import ServerThread  # noqa: E402

TOKEN = "fuzz"
EXAMPLES = 200  # per stream (schema-valid, schema-invalid, plausible targets): 600 requests in all


def _shorten_blocking_calls(spec: dict) -> dict:
    """Cap simulated durations so each generated call stays cheap (the endpoints are unchanged) and leave out
    the stop button."""
    spec = copy.deepcopy(spec)
    del spec["paths"]["/safety_stop"]  # a latched stop would make every later command a 409 (tested on its own)
    schemas = spec["components"]["schemas"]
    caps = {("JointResetBody", "duration"): 0.3, ("AdvanceBody", "seconds"): 0.05, ("StepBody", "advance"): 0.05}
    for (model, field), cap in caps.items():
        prop = schemas[model]["properties"][field]
        for option in prop.get("anyOf", [prop]):
            if "maximum" in option:
                option["maximum"] = cap
    return spec


def _fingerprint(backend) -> tuple:
    state = backend.state()
    return (state.target_pose.tobytes(), state.tcp_pose.tobytes(), state.q.tobytes(), state.timestamp,
            state.controller_mode, tuple(state.errors))


class CommandLog(TwinBackend):
    """The real twin, with every command that reaches it and is accepted logged."""

    COMMANDS = ("set_target", "set_gripper", "set_impedance", "joint_reset", "recover", "hold", "advance",
                "reset_robot", "reset_scene")

    def __init__(self, config: TwinConfig):
        self.accepted: list[str] = []
        super().__init__(config)
        self.accepted.clear()  # construction is not a command


def _logged(name: str):
    def command(self, *args, **kwargs):
        result = getattr(TwinBackend, name)(self, *args, **kwargs)  # a ValueError: the twin refused, nothing changed
        self.accepted.append(name)
        return result

    return command


for _name in CommandLog.COMMANDS:
    setattr(CommandLog, _name, _logged(_name))


@pytest.fixture(scope="module")
def fuzz_target():
    backend = CommandLog(TwinConfig(scene="pick_cube", lockstep=True, cameras=("wrist",), image_size=(16, 16)))
    box = SafetyBox(position_low=(0.2, -0.3, 0.05), position_high=(0.7, 0.3, 0.6), center_quat=(1.0, 0.0, 0.0, 0.0))
    server = ServerThread(create_app(backend, backend.cameras(),
                                     ServerConfig(safety_box=box, on_violation="reject", token=TOKEN))).start()
    spec = httpx.get(server.url + "/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    yield backend, server, schemathesis.openapi.from_dict(_shorten_blocking_calls(spec)), spec
    server.stop()
    backend.close()


def test_fuzzed_requests_never_5xx_and_rejections_change_nothing(fuzz_target):
    backend, server, schema, spec = fuzz_target
    session = __import__("requests").Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    seen = {"calls": 0, "rejected": 0, "operations": set()}
    # Schema-valid poses almost never land in the box with a unit quaternion, so a third stream
    # sends plausible targets (inside and just outside the box) through the same /target operation.
    target = schema["/target"]["POST"]
    near_down = st.tuples(st.just(1.0), *[st.floats(-0.2, 0.2)] * 3)
    plausible = st.builds(
        lambda xyz, quat, gripper: schema.make_case(operation=target, media_type="application/json",
                                                    body={"pose": [*xyz, *quat], "gripper": gripper}),
        st.tuples(st.floats(0.15, 0.75), st.floats(-0.35, 0.35), st.floats(0.0, 0.65)), near_down,
        st.one_of(st.none(), st.floats(0.0, 0.08)))
    strategy = st.one_of(schema.as_strategy(schemathesis.GenerationMode.POSITIVE),
                         schema.as_strategy(schemathesis.GenerationMode.NEGATIVE), plausible)

    @settings(max_examples=3 * EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case):
        before, accepted = _fingerprint(backend), len(backend.accepted)
        response = case.call(base_url=server.url, session=session, timeout=10)
        seen["calls"] += 1
        seen["operations"].add(f"{case.method} {case.path}")
        assert response.status_code < 500, (case.method, case.path, case.body, response.text)
        listed = spec["paths"][case.path][case.method.lower()]["responses"]
        assert str(response.status_code) in listed, (case.method, case.path, response.status_code, sorted(listed))
        if response.status_code >= 400:
            seen["rejected"] += 1
            where = (case.method, case.path, case.body, response.status_code)
            assert backend.accepted[accepted:] == [], where  # a rejected command never reached the twin
            assert _fingerprint(backend) == before, where

    run()
    print(f"fuzz: {seen['calls']} requests, {seen['rejected']} rejected, {len(seen['operations'])} operations, "
          f"accepted targets: {backend.accepted.count('set_target')}")
    assert seen["calls"] >= 500, seen
    assert seen["rejected"] >= 100, seen  # the negative half really exercised validation
    assert {"POST /target", "POST /impedance", "POST /step", "POST /joint_reset"} <= seen["operations"]
    assert np.all(np.isfinite(backend.state().tcp_pose))
    assert {"set_target", "advance"} <= set(backend.accepted)  # accepted commands did get through


UNPARSEABLE = [b"not json", b'{"pose": [0.4,', b"\xff\xfe{}", b"[" * 100_000, b"{" + b'"a":' * 50_000]


def test_unparseable_json_is_a_422_the_spec_lists_and_changes_nothing(fuzz_target):
    backend, server, _, spec = fuzz_target
    routes = [(path, method) for path, methods in spec["paths"].items()
              for method, operation in methods.items() if "requestBody" in operation]
    assert len(routes) >= 5
    before, accepted = _fingerprint(backend), len(backend.accepted)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}",
                                                    "content-type": "application/json"}, timeout=10) as client:
        for path, method in routes:
            assert "422" in spec["paths"][path][method]["responses"], (method, path)
            for body in UNPARSEABLE:
                response = client.request(method, path, content=body)
                assert response.status_code == 422, (method, path, body[:20], response.text)
                error = response.json()["detail"][0]
                assert error["type"] == "json_invalid" and error["loc"][0] == "body", response.text
    assert backend.accepted[accepted:] == [] and _fingerprint(backend) == before
