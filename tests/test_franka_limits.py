"""Franka's limits table, the reflex checks, and the twin's reflexes: violent streams stop the arm with
libfranka's error names; valid env actions (full scale, box corners, a stale start pose) never do."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("robot_servers.backends.twin")  # sets MUJOCO_GL before mujoco loads

from robot_servers.backends.base import ImpedanceParams  # noqa: E402
from robot_servers.backends.twin import TwinBackend  # noqa: E402
from robot_servers.control.franka_limits import (  # noqa: E402
    FRANKA_LIMITS, limits_for, min_jerk_duration, torque_rate_reflex, velocity_reflex)
from robot_servers.guard import GuardConfig, RobotFault  # noqa: E402
from serl.envs.robot_client import LocalRobot  # noqa: E402
from serl.envs.tasks import make_sim_env  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_table_holds_the_datasheet_numbers():
    panda, fr3 = FRANKA_LIMITS["panda"], FRANKA_LIMITS["fr3"]
    assert panda.joint_velocity == (2.175,) * 4 + (2.61,) * 3
    assert fr3.joint_velocity == (2.62,) * 4 + (5.26, 4.18, 5.26)
    assert panda.torque == fr3.torque == (87.0,) * 4 + (12.0,) * 3
    assert panda.torque_rate == fr3.torque_rate == 1000.0
    assert panda.torque_step(0.001) == pytest.approx(1.0)
    assert (panda.translation[0], fr3.translation[0]) == (1.7, 3.0)
    assert fr3.joint_position[0][5] == 0.5445 and panda.joint_position[1][3] == -0.0698
    with pytest.raises(ValueError, match="arm"):
        limits_for("ur5")


def test_checks_name_libfranka_errors_and_pass_values_at_the_limit():
    panda = limits_for("panda")
    assert velocity_reflex(panda, panda.joint_velocity, [1.7, 0, 0, 2.5, 0, 0]) is None
    assert velocity_reflex(panda, [0, 0, 0, 2.2, 0, 0, 0]).startswith("joint_velocity_violation: joint 4")
    assert velocity_reflex(panda, np.zeros(7), [1.2, 1.3, 0, 0, 0, 0]).startswith("cartesian_velocity_violation")
    assert velocity_reflex(panda, np.zeros(7), [0, 0, 0, 0, 0, 2.6]).startswith("cartesian_velocity_violation")
    assert torque_rate_reflex(panda, np.ones(7), np.zeros(7), 0.001) is None  # 1 Nm per ms is allowed
    assert torque_rate_reflex(panda, [0, 0, 1.5, 0, 0, 0, 0], np.zeros(7), 0.001).startswith(
        "controller_torque_discontinuity: joint 3")


@pytest.mark.parametrize("arm", ["panda", "fr3"])
def test_min_jerk_plan_stays_within_velocity_acceleration_and_jerk(arm):
    limits = limits_for(arm)
    start, goal = np.zeros(7), np.array([2.0, -1.0, 0.5, -2.0, 1.0, 1.5, -2.5])
    duration = min_jerk_duration(limits, start, goal)
    t = np.linspace(0.0, duration, 20001)
    s = t / duration
    profile = np.outer(10 * s**3 - 15 * s**4 + 6 * s**5, goal - start)
    dt = t[1] - t[0]
    velocity = np.diff(profile, axis=0) / dt
    acceleration = np.diff(velocity, axis=0) / dt
    assert np.all(np.abs(velocity).max(axis=0) <= np.array(limits.joint_velocity) * 1.001)
    assert np.all(np.abs(acceleration).max(axis=0) <= np.array(limits.joint_acceleration) * 1.001)
    # the plan is tight: one of the three limits is reached
    assert np.max(np.abs(velocity).max(axis=0) / limits.joint_velocity) > 0.99 or \
        np.max(np.abs(acceleration).max(axis=0) / limits.joint_acceleration) > 0.99


@pytest.fixture
def twin():
    backend = TwinBackend(scene="empty", cameras=())
    yield backend
    backend.close()


def _advance_until_error(twin, seconds: float) -> list[str]:
    for _ in range(int(seconds / 0.01)):
        twin.advance(0.01)
        if twin.state().errors:
            break
    return twin.state().errors


def test_stiff_unclipped_target_trips_a_velocity_reflex_and_brakes_until_recover(twin):
    twin.set_impedance(ImpedanceParams(translational_stiffness=(6000.0,) * 3, translational_clip=(1.0,) * 3))
    far = twin.state().tcp_pose.copy()
    far[1] += 0.4
    twin.set_target(far)
    errors = _advance_until_error(twin, 1.0)
    assert len(errors) == 1 and errors[0].split(":")[0] in ("joint_velocity_violation", "cartesian_velocity_violation")
    stopped = twin.state()
    assert stopped.controller_mode == "idle" and np.all(stopped.dq == 0.0)
    twin.advance(0.2)
    assert np.array_equal(twin.state().q, stopped.q), "brakes hold the arm where the reflex stopped it"
    with pytest.raises(RuntimeError, match="reflex"):
        twin.set_target(far)
    with pytest.raises(RuntimeError):
        twin.joint_reset()
    guard_client = LocalRobot(twin, {}, GuardConfig())  # through the guard the same refusal is a RobotFault
    with pytest.raises(RobotFault, match="velocity_violation"):
        guard_client.set_target(far)
    twin.set_impedance(ImpedanceParams())
    twin.recover()
    recovered = twin.state()
    assert recovered.errors == [] and recovered.controller_mode == "impedance"
    assert np.allclose(recovered.q, stopped.q), "a reflex recovers in place, not at home"
    twin.advance(0.5)
    assert twin.state().errors == [] and np.allclose(twin.state().tcp_pose[:3], recovered.tcp_pose[:3], atol=2e-3)


def test_torque_stream_faster_than_1000_nm_per_s_is_a_torque_discontinuity(twin):
    twin.set_impedance(ImpedanceParams(torque_rate_limit=10.0))  # the law may step 10 Nm per tick
    target = twin.state().tcp_pose.copy()
    target[2] -= 0.05
    twin.set_target(target)
    errors = _advance_until_error(twin, 0.5)
    assert len(errors) == 1 and errors[0].startswith("controller_torque_discontinuity")
    # the same step with the default 1 Nm per tick is continuous
    twin.set_impedance(ImpedanceParams())
    twin.recover()
    twin.set_target(target)
    assert _advance_until_error(twin, 1.0) == []


def test_too_short_joint_reset_is_stretched_within_the_limits(twin):
    goal = np.array(twin.home_q) + np.array([1.0, 0.3, -0.5, 0.4, 0.6, -0.5, 1.0])
    twin.joint_reset(goal, duration=0.1)
    state = twin.state()
    assert state.errors == [] and state.controller_mode == "impedance"
    assert np.abs(state.q - goal).max() < 1e-3
    twin.joint_reset(duration=0.1)
    assert twin.state().errors == []


@pytest.mark.parametrize("task", ["PandaPickCube", "PandaPegInsertion"])
def test_violent_but_valid_env_actions_never_trip_a_reflex(task):
    env = make_sim_env(task, seed=0)
    twin = env.client.backend
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    peak = 0.0
    for step in range(300):
        # alternate the box corners at full scale with uniformly random full-scale actions
        action = np.sign(rng.uniform(-1, 1, env.action_space.shape)) if step % 2 else \
            rng.uniform(-1, 1, env.action_space.shape)
        _, _, terminated, truncated, _ = env.step(action)
        state = twin.state()
        assert state.errors == [], f"step {step}: {state.errors}"
        peak = max(peak, float(np.max(np.abs(state.dq) / twin.limits.joint_velocity)))
        if terminated or truncated:
            env.reset()
    assert peak < 0.8
    env.close()


def test_a_step_from_a_stale_pose_does_not_jump():
    env = make_sim_env("PandaPickCube", seed=0)
    twin = env.client.backend
    env.reset(seed=0)
    q = twin.state().q.copy()
    q[0] += 0.12  # the arm moves behind the env's back: its last observation is ~6 cm stale
    twin.reset_robot(q)
    before = twin.state().tcp_pose[:3]
    env.step(np.array([1.0, 1.0, -1.0, 1.0, 1.0, 1.0, 1.0]))
    state = twin.state()
    assert state.errors == []
    # the target is far from the arm, but the error clip bounds the pull: one period moves it a few cm
    assert np.linalg.norm(state.tcp_pose[:3] - before) < 0.05
    env.close()


def test_real_time_twin_trips_the_same_reflex():
    import time

    twin = TwinBackend(scene="empty", cameras=(), lockstep=False)
    try:
        twin.set_impedance(ImpedanceParams(translational_stiffness=(6000.0,) * 3, translational_clip=(1.0,) * 3))
        far = twin.state().tcp_pose.copy()
        far[1] += 0.4
        twin.set_target(far)
        deadline = time.monotonic() + 10.0
        while not twin.state().errors and time.monotonic() < deadline:
            time.sleep(0.01)
        state = twin.state()
        assert state.controller_mode == "idle" and "velocity_violation" in state.errors[0]
        with pytest.raises(RuntimeError, match="reflex"):
            twin.set_target(far)
    finally:
        twin.close()
