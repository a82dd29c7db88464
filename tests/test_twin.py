"""Fidelity, API and bad-input tests of the MuJoCo twin (real MuJoCo, real rendering)."""

import time

import numpy as np
import pytest

from robot_servers.backends.base import ImpedanceParams, RobotState
from robot_servers.backends.twin import TwinBackend, TwinConfig
from robot_servers.control.pose import euler_to_quat, quat_multiply, quat_to_euler
from robot_servers.twin import models

DOWN = np.array([1.0, 0.0, 0.0, 0.0])
HOME_TCP = np.array([0.3069, 0.0, 0.4869])  # Franka's home end-effector position


@pytest.fixture
def twin():
    backend = TwinBackend(TwinConfig(scene="empty"))
    yield backend
    backend.close()


def move_linear(backend, position, quat, seconds, hz=10):
    """Interpolate the target from the current TCP to ``position`` at ``hz`` (as an env would)."""
    start = backend.state().tcp_pose[:3]
    steps = max(int(seconds * hz), 1)
    for i in range(1, steps + 1):
        backend.set_target(np.r_[start + (np.asarray(position) - start) * i / steps, quat])
        backend.advance(1.0 / hz)


@pytest.mark.parametrize("robot", ["panda", "fr3"])
def test_home_pose_and_hold(robot):
    with TwinBackend(TwinConfig(robot=robot, scene="empty")) as backend:
        state = backend.state()
        np.testing.assert_allclose(state.tcp_pose[:3], HOME_TCP, atol=2e-4)
        np.testing.assert_allclose(state.tcp_pose[3:], DOWN, atol=1e-6)
        backend.advance(1.0)
        held = backend.state()
        assert np.linalg.norm(held.tcp_pose[:3] - state.tcp_pose[:3]) < 5e-4  # gravity compensated
        assert held.timestamp == pytest.approx(1.0)
        assert held.gripper_width == pytest.approx(0.08, abs=1e-3)
        assert held.controller_mode == "impedance" and held.errors == []
        assert RobotState.from_dict(held.to_dict()).timestamp == held.timestamp


def test_models_have_published_kinematics_and_limits():
    import mujoco

    for robot, j6_low in (("panda", -0.0175), ("fr3", 0.5445)):
        model = mujoco.MjModel.from_xml_string(models.build_mjcf(robot, "empty"))
        assert model.opt.timestep == 0.001
        assert model.jnt_limited[:7].all()
        assert model.jnt_range[5, 0] == pytest.approx(j6_low)
        np.testing.assert_allclose(model.actuator_ctrlrange[:7, 1], [87, 87, 87, 87, 12, 12, 12])
        np.testing.assert_allclose(model.body("link3").pos, [0, -0.316, 0])
        np.testing.assert_allclose(model.body("link5").pos, [-0.0825, 0.384, 0])
    panda = mujoco.MjModel.from_xml_string(models.build_mjcf("panda", "empty"))
    assert panda.body("link1").mass[0] == pytest.approx(4.970684)
    assert panda.body_gravcomp[panda.body("hand").id] == 1.0


@pytest.mark.parametrize("robot", ["panda", "fr3"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_5cm_step_settles_within_5mm_and_1s(robot, axis):
    twin = TwinBackend(TwinConfig(robot=robot, scene="empty"))
    twin.advance(0.2)
    target = twin.state().tcp_pose.copy()
    target[axis] += 0.05 if axis != 2 else -0.05
    twin.set_target(target)
    twin.advance(1.0)
    errors = []
    for _ in range(10):  # and it stays there
        errors.append(np.linalg.norm(twin.state().tcp_pose[:3] - target[:3]))
        twin.advance(0.05)
    twin.close()
    assert max(errors) < 0.005, errors


def test_clipped_error_bounds_the_free_space_force(twin):
    params = ImpedanceParams()
    start = twin.state().tcp_pose.copy()
    target = start.copy()
    target[0] += 1.0  # 1 m away: far outside the workspace
    twin.set_target(target)
    peak = 0.0
    for _ in range(300):
        twin.advance(0.001)
        peak = max(peak, np.abs(twin.controller.force[:3]).max())
    moved = twin.state().tcp_pose[0] - start[0]
    bound = params.translational_stiffness[0] * params.translational_clip[0]  # 2000 N/m · 1 cm = 20 N
    assert moved > 0.02  # the arm moves towards the target ...
    assert bound * 0.9 < peak <= bound + 1e-9  # ... pulled by no more than K·clip


def test_impedance_changes_at_run_time(twin):
    twin.set_impedance(ImpedanceParams(translational_stiffness=(3000, 3000, 3000), translational_clip=(0.02,) * 3))
    twin.set_target(twin.state().tcp_pose + np.r_[0, 0, -1.0, 0, 0, 0, 0])
    peak = 0.0
    for _ in range(100):
        twin.advance(0.001)
        peak = max(peak, np.abs(twin.controller.force[:3]).max())
    assert 0.9 * 60.0 < peak <= 60.0 + 1e-9  # the new K·clip = 3000 N/m · 2 cm


def test_clipped_error_bounds_the_contact_force():
    with TwinBackend(TwinConfig(scene="empty")) as backend:
        move_linear(backend, [0.45, 0.0, 0.05], DOWN, 2.0)
        backend.set_gripper(0.0)
        backend.advance(1.0)
        backend.set_target(np.r_[0.45, 0.0, -1.0, DOWN])  # 1 m into the table
        backend.advance(1.5)
        state = backend.state()
        bound = 2000 * 0.01
        assert state.tcp_pose[2] > -0.01  # the table stops the hand
        assert 0.8 * bound < state.wrench[2] < 1.1 * bound  # the table pushes back with ≈ K·clip
        assert np.abs(state.wrench[:2]).max() < 3.0


def test_joint_limits_respected(twin):
    params = ImpedanceParams(translational_clip=(0.2, 0.2, 0.2), rotational_clip=(0.5, 0.5, 0.5))
    twin.set_impedance(params)
    low, high = twin.joint_low, twin.joint_high
    for target in ([0.05, 0.0, 0.9], [-0.3, 0.5, 0.1], [0.9, -0.9, 0.6]):  # unreachable poses
        for _ in range(15):
            if twin.state().errors:  # such a violent pull may trip a speed reflex, as on the arm
                assert all("velocity_violation" in e for e in twin.state().errors)
                twin.recover()
            twin.set_target(np.r_[target, euler_to_quat([0.3, 2.5, -1.0])])
            twin.advance(0.1)
            q = twin.state().q
            assert np.all(q >= low - 0.01) and np.all(q <= high + 0.01), q
    with pytest.raises(ValueError, match="q: joint 4"):
        twin.joint_reset(np.r_[0, 0, 0, 0.5, 0, 1.5, 0])


def test_joint_reset_reaches_home_within_1_mrad(twin):
    move_linear(twin, [0.5, 0.2, 0.2], euler_to_quat([np.pi, 0.3, 0.4]), 1.5)
    assert np.abs(twin.state().q - twin.home_q).max() > 0.1
    twin.joint_reset(duration=2.0)
    state = twin.state()
    assert state.controller_mode == "impedance"
    assert np.abs(state.q - twin.home_q).max() < 1e-3
    assert 2.0 < state.timestamp - 1.5 < 7.5
    twin.advance(1.0)  # impedance holds there
    assert np.abs(twin.state().q - twin.home_q).max() < 1e-3
    custom = twin.home_q + np.r_[0.2, -0.1, 0.1, 0.2, 0.0, -0.2, 0.3]
    twin.joint_reset(custom, duration=1.0)
    assert np.abs(twin.state().q - custom).max() < 1e-3


def test_gripper_moves_at_hand_speed_and_is_non_blocking(twin):
    twin.set_gripper(0.0)
    assert twin.state().gripper_width > 0.079  # returned at once
    twin.advance(0.4)
    assert 0.035 < twin.state().gripper_width < 0.05  # 0.1 m/s
    twin.advance(0.6)
    assert twin.state().gripper_width < 0.002
    twin.set_target(twin.state().tcp_pose, gripper=0.05)
    twin.advance(1.0)
    assert twin.state().gripper_width == pytest.approx(0.05, abs=1e-3)


@pytest.mark.parametrize("seed", [5, 6])
def test_scripted_grasp_lifts_the_cube(seed):
    with TwinBackend(TwinConfig(scene="pick_cube", seed=seed)) as backend:
        cube = backend.scene["cube"]
        assert cube[2] == pytest.approx(models.CUBE_HALF, abs=1e-3)
        grasp = quat_multiply(euler_to_quat([0, 0, quat_to_euler(cube[3:])[2]]), DOWN)
        move_linear(backend, cube[:3] + [0, 0, 0.1], grasp, 1.5)
        move_linear(backend, cube[:3] + [0, 0, 0.002], grasp, 1.0)
        backend.advance(0.5)
        backend.set_gripper(0.0)
        backend.advance(0.8)
        move_linear(backend, cube[:3] + [0, 0, 0.15], grasp, 1.5)
        backend.advance(0.5)
        lifted = backend.scene["cube"]
        assert lifted[2] - cube[2] >= 0.10
        assert 0.03 < backend.state().gripper_width < 0.041  # holding a 4 cm cube
        assert backend.state().wrench[2] < -0.3  # its weight pulls the hand down


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_scripted_insertion_succeeds(seed):
    with TwinBackend(TwinConfig(scene="peg_insertion", seed=seed)) as backend:
        backend.advance(0.3)
        scene = backend.scene
        hole, peg = scene["hole"], scene["peg"]
        assert np.linalg.norm(peg[:3] - backend.state().tcp_pose[:3]) < 0.02  # the peg starts in the hand
        align = quat_multiply(euler_to_quat([0, 0, quat_to_euler(hole[3:])[2]]), DOWN)
        peg_below_tcp = 0.0116 + models.PEG_HALF_LENGTH
        move_linear(backend, hole[:3] + [0, 0, peg_below_tcp + 0.06], align, 2.5)
        backend.advance(1.0)  # settle above the hole (3 mm clearance)
        move_linear(backend, hole[:3] + [0, 0, peg_below_tcp], align, 2.0)
        backend.advance(0.5)
        peg = backend.scene["peg"]
        assert peg[2] - models.PEG_HALF_LENGTH < models.HOLE_DEPTH / 2  # more than halfway in
        assert np.linalg.norm(peg[:2] - hole[:2]) < models.HOLE_CLEARANCE + 1e-3


def test_reset_scene_is_random_but_deterministic_per_seed():
    with TwinBackend(TwinConfig(scene="pick_cube", seed=0)) as a, TwinBackend(TwinConfig(scene="pick_cube")) as b:
        a.reset_scene(7)
        b.reset_scene(7)
        np.testing.assert_array_equal(a.scene["cube"], b.scene["cube"])
        a.reset_scene(8)
        assert np.linalg.norm(a.scene["cube"][:2] - b.scene["cube"][:2]) > 1e-3
        assert np.abs(a.scene["cube"][:2] - [0.5, 0.0]).max() <= 0.1


def test_same_seed_and_commands_give_identical_runs():
    def run():
        with TwinBackend(TwinConfig(scene="pick_cube", seed=11)) as backend:
            target = backend.state().tcp_pose + np.r_[0.05, -0.03, -0.1, 0, 0, 0, 0]
            backend.set_target(target, gripper=0.02)
            backend.advance(0.7)
            return backend.state(), backend.scene["cube"]

    (s1, c1), (s2, c2) = run(), run()
    np.testing.assert_array_equal(s1.q, s2.q)
    np.testing.assert_array_equal(s1.dq, s2.dq)
    np.testing.assert_array_equal(c1, c2)


@pytest.mark.parametrize("call, field", [
    (lambda b: b.set_target(np.r_[0.4, np.nan, 0.3, DOWN]), "pose"),
    (lambda b: b.set_target(np.r_[0.4, 0.0, 0.3, DOWN][:6]), "pose"),
    (lambda b: b.set_target(np.r_[0.4, 0.0, np.inf, DOWN]), "pose"),
    (lambda b: b.set_target(np.r_[0.4, 0.0, 0.3, DOWN], gripper=0.09), "gripper"),
    (lambda b: b.set_gripper(-0.01), "width"),
    (lambda b: b.set_gripper(float("nan")), "width"),
    (lambda b: b.set_impedance(ImpedanceParams(translational_stiffness=(1e5, 1e5, 1e5))), "translational_stiffness"),
    (lambda b: b.set_impedance(ImpedanceParams(rotational_stiffness=(-1, 1, 1))), "rotational_stiffness"),
    (lambda b: b.joint_reset(np.zeros(6)), "q"),
    (lambda b: b.joint_reset(duration=float("nan")), "duration"),
    (lambda b: b.advance(-1.0), "seconds"),
])
def test_bad_input_raises_naming_the_field_and_changes_nothing(call, field):
    with TwinBackend(TwinConfig(scene="pick_cube", seed=2)) as bad, TwinBackend(TwinConfig(scene="pick_cube", seed=2)) as good:
        for backend in (bad, good):
            backend.set_target(backend.state().tcp_pose + np.r_[0.02, 0, 0, 0, 0, 0, 0], gripper=0.06)
            backend.advance(0.2)
        gains = bad.controller.gains.copy()
        with pytest.raises(ValueError, match=field):
            call(bad)
        np.testing.assert_array_equal(bad.controller.gains, gains)
        for backend in (bad, good):
            backend.advance(0.3)
        s_bad, s_good = bad.state(), good.state()
        np.testing.assert_array_equal(s_bad.q, s_good.q)
        np.testing.assert_array_equal(s_bad.target_pose, s_good.target_pose)
        assert s_bad.gripper_width == s_good.gripper_width


def test_recover_clears_errors_and_holds(twin):
    twin._errors.append("reflex")
    twin.set_target(twin.state().tcp_pose + np.r_[0.05, 0, 0, 0, 0, 0, 0])
    twin.advance(0.05)
    twin.recover()
    state = twin.state()
    assert state.errors == []
    np.testing.assert_allclose(state.target_pose[:3], state.tcp_pose[:3], atol=1e-3)


def test_cameras_render_the_scene():
    config = TwinConfig(scene="pick_cube", image_size=(64, 80), render_size=(120, 160),
                        crops={"front": (10, 20, 100, 120)})
    with TwinBackend(config) as backend:
        cameras = backend.cameras()
        assert set(cameras) == {"wrist", "front"}
        frames = {}
        for name, camera in cameras.items():
            frame, stamp = camera.read()
            assert frame.shape == (64, 80, 3) == camera.shape and frame.dtype == np.uint8
            assert frame.std() > 5  # not a blank image
            assert stamp == backend.state().timestamp
            frames[name] = frame
        assert np.abs(frames["wrist"].astype(int) - frames["front"]).mean() > 5
        backend.set_gripper(0.0)
        backend.advance(1.0)
        closed, _ = cameras["wrist"].read()
        assert np.abs(closed.astype(int) - frames["wrist"]).mean() > 1  # the fingers moved in view


def test_config_rejects_unknown_names():
    for kwargs, field in (({"robot": "ur5"}, "robot"), ({"scene": "stack"}, "scene"),
                          ({"cameras": ("side",)}, "cameras"), ({"image_size": (0, 10)}, "image_size")):
        with pytest.raises(ValueError, match=field):
            TwinConfig(**kwargs)


def test_real_time_mode_paces_physics_to_the_wall_clock():
    with TwinBackend(TwinConfig(scene="empty", lockstep=False)) as backend:
        with pytest.raises(RuntimeError, match="real time"):
            backend.advance(0.1)
        time.sleep(0.1)
        start_sim, start_wall = backend.state().timestamp, time.perf_counter()
        target = backend.state().tcp_pose + np.r_[0, 0.03, 0, 0, 0, 0, 0]
        backend.set_target(target)
        time.sleep(1.0)
        state = backend.state()
        elapsed = time.perf_counter() - start_wall
        # never ahead of the wall clock; behind only when the CPU is starved (2 shared cores in CI)
        assert 0.5 * elapsed < state.timestamp - start_sim <= elapsed + 0.21
        assert np.linalg.norm(state.tcp_pose[:3] - target[:3]) < 0.01
    assert not backend._thread.is_alive()


def test_compiled_tick_loop_matches_the_python_loop():
    from robot_servers.twin import fastloop

    if not fastloop.available():
        pytest.skip("numba not installed: the twin runs the Python loop only")
    runs = []
    for compiled in (True, False):
        with TwinBackend(TwinConfig(scene="pick_cube", seed=4)) as backend:
            if not compiled:
                backend.world.fast = None
            backend.set_target(backend.state().tcp_pose + np.r_[0.04, -0.03, -0.2, 0, 0, 0, 0], gripper=0.0)
            backend.advance(0.8)
            runs.append((backend.state(), backend.controller.tau.copy()))
    (fast, fast_tau), (slow, slow_tau) = runs
    np.testing.assert_allclose(fast.q, slow.q, atol=1e-7)
    np.testing.assert_allclose(fast_tau, slow_tau, atol=1e-5)
    assert fast.gripper_width == pytest.approx(slow.gripper_width, abs=1e-7)


def test_reset_robot_puts_the_arm_at_rest_at_home(twin):
    move_linear(twin, [0.5, 0.1, 0.2], DOWN, 1.0)
    twin.set_gripper(0.0)
    twin.advance(0.3)
    twin.reset_robot()
    state = twin.state()
    np.testing.assert_allclose(state.q, twin.home_q)
    assert np.abs(state.dq).max() == 0.0
    assert state.gripper_width == pytest.approx(0.08)
    twin.advance(0.5)
    assert np.abs(twin.state().q - twin.home_q).max() < 1e-3


def test_real_time_joint_reset_blocks_until_home():
    with TwinBackend(TwinConfig(scene="empty", lockstep=False)) as backend:
        backend.set_target(backend.state().tcp_pose + np.r_[0.05, 0.05, -0.05, 0, 0, 0, 0])
        time.sleep(0.4)
        assert np.abs(backend.state().q - backend.home_q).max() > 0.02
        backend.joint_reset(duration=0.5)
        state = backend.state()
        assert state.controller_mode == "impedance" and state.errors == []
        assert np.abs(state.q - backend.home_q).max() < 1e-3
    backend.close()  # idempotent


def test_optional_serl_target_filter_smooths_steps():
    moved = {}
    for target_filter in (None, 0.005):
        with TwinBackend(TwinConfig(scene="empty", target_filter=target_filter)) as backend:
            start = backend.state().tcp_pose.copy()
            target = start + np.r_[0.005, 0, 0, 0, 0, 0, 0]  # inside the 1 cm clip: the filter alone shapes it
            backend.set_target(target)
            np.testing.assert_allclose(backend.state().target_pose, target, atol=1e-12)  # the command is reported
            backend.advance(0.05)
            moved[target_filter] = backend.state().tcp_pose[0] - start[0]
            backend.advance(1.0)
            assert np.linalg.norm(backend.state().tcp_pose[:3] - target[:3]) < 0.0005
    assert moved[0.005] < 0.5 * moved[None]  # only 1 − e^(−0.25) of the step has reached the law after 50 ms
    with pytest.raises(ValueError, match="target_filter"):
        TwinConfig(target_filter=0.0)


def test_optional_fr3_visual_meshes():
    pytest.importorskip("franky_sim")
    with TwinBackend(TwinConfig(robot="fr3", scene="empty", visual="meshes")) as meshes, \
            TwinBackend(TwinConfig(robot="fr3", scene="empty")) as primitives:
        assert meshes.model.nmesh > 20 and primitives.model.nmesh == 0
        assert meshes.model.nbody == primitives.model.nbody  # same bodies, same dynamics
        np.testing.assert_allclose(meshes.model.body_mass, primitives.model.body_mass)
        meshes.advance(0.2)
        primitives.advance(0.2)
        np.testing.assert_allclose(meshes.state().q, primitives.state().q, atol=1e-9)
        with_meshes, _ = meshes.cameras()["front"].read()
        plain, _ = primitives.cameras()["front"].read()
        assert np.abs(with_meshes.astype(int) - plain).mean() > 1  # the arm looks different
    with pytest.raises(ValueError, match="visual"):
        TwinConfig(visual="wireframe")


def test_nullspace_target_moves_the_posture_not_the_tcp_and_is_validated():
    backend = TwinBackend(TwinConfig(scene="empty", lockstep=True, cameras=()))
    try:
        backend.advance(0.2)
        before = backend.state()
        home = backend.nullspace_target
        for bad, message in [([0.0] * 6, "shape"), ([*home[:6], np.nan], "finite"), ([9.0, *home[1:]], "joint 1")]:
            with pytest.raises(ValueError, match=message):
                backend.set_nullspace_target(bad)
            np.testing.assert_array_equal(backend.nullspace_target, home)  # a refused posture changes nothing
        posture = home.copy()
        posture[0] += 0.3
        backend.set_nullspace_target(posture)
        backend.advance(3.0)
        after = backend.state()
        assert after.q[0] - before.q[0] > 0.2  # joint 1 swings towards the new posture ...
        assert np.linalg.norm(after.tcp_pose[:3] - before.tcp_pose[:3]) < 1e-3  # ... while the TCP holds
    finally:
        backend.close()
