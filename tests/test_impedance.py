"""The impedance law (robot_servers/control/impedance.py) against an independent numpy reference."""

import numpy as np
import pytest

from robot_servers.backends.base import ImpedanceParams
from robot_servers.control import pose as P
from robot_servers.backends.twin import TwinBackend, TwinConfig
from robot_servers.control.impedance import RATE, ImpedanceController, matrix_to_quat_xyzw

RNG = np.random.default_rng(0)
DOWN = np.array([1.0, 0.0, 0.0, 0.0])


@pytest.fixture(autouse=True)
def fresh_rng():
    """Each test draws the same cases whichever tests ran before it in this process."""
    global RNG
    RNG = np.random.default_rng(0)


def reference_law(jac, pos, quat, q, dq, coriolis, target, params: ImpedanceParams, q_ns):
    """Textbook form of SERL's law with pinv, no rate limit (compare with a large rate limit), on the
    first tick after a reset (the integral sum is that tick's clipped error)."""
    params = params.validate()
    err_quat = P.quat_multiply(quat, P.quat_conjugate(target[3:]))
    err_quat = err_quat if err_quat[3] >= 0 else -err_quat
    error = np.r_[pos - target[:3], err_quat[:3]]
    clip = np.r_[params.translational_clip, params.rotational_clip]
    neg_t, neg_r = params.translational_clip_neg, params.rotational_clip_neg
    clip_neg = np.r_[params.translational_clip if neg_t is None else neg_t, params.rotational_clip if neg_r is None else neg_r]
    stiffness = np.r_[params.translational_stiffness, params.rotational_stiffness]
    damping = np.concatenate(params.damping())
    clipped = np.clip(error, -clip_neg, clip)
    integral = np.clip(clipped, -np.r_[0.1, 0.1, 0.1, 0.3, 0.3, 0.3], np.r_[0.1, 0.1, 0.1, 0.3, 0.3, 0.3])
    ki = np.r_[params.translational_ki, params.rotational_ki]
    force = -stiffness * clipped - damping * (jac @ dq) - ki * integral
    k_ns = np.full(7, params.nullspace_stiffness)
    k_ns[0] = params.joint1_nullspace_stiffness
    projector = np.eye(7) - jac.T @ np.linalg.pinv(jac.T)
    tau_ns = projector @ (k_ns * (q_ns - q) - 2 * np.sqrt(k_ns) * dq)
    return jac.T @ force + tau_ns + coriolis, force


def run(controller, jac, pos, quat, q, dq, coriolis, target):
    xmat = P.quat_to_matrix(quat).reshape(9)
    return controller.compute(jac[:3].copy(), jac[3:].copy(), pos, xmat, q, dq, coriolis, np.zeros(7), target).copy()


def random_case(error_scale=0.005):
    jac = np.eye(6, 7) * 0.5 + RNG.normal(size=(6, 7)) * 0.1  # conditioned like a Panda away from singularities
    quat = P.normalize_quat(RNG.normal(size=4))
    target = np.r_[RNG.normal(size=3) * 0.3, quat]
    pos = target[:3] + RNG.normal(size=3) * error_scale
    quat = P.quat_multiply(P.rotvec_to_quat(RNG.normal(size=3) * error_scale), quat)
    return jac, pos, quat, RNG.normal(size=7), RNG.normal(size=7) * 0.1, RNG.normal(size=7), target


SERL_EXTRAS = {"translational_clip_neg": (0.004, 0.02, 0.01), "rotational_clip_neg": (0.1, 0.02, 0.05),
               "translational_ki": (10.0, 0.0, 50.0), "rotational_ki": (1.0, 2.0, 0.0)}


@pytest.mark.parametrize("extras", [{}, SERL_EXTRAS], ids=["plain", "asymmetric_clip_and_integral"])
@pytest.mark.parametrize("error_scale", [0.002, 0.2])  # inside and far outside the clip box
def test_law_matches_reference(error_scale, extras):
    params = ImpedanceParams(translational_stiffness=(1500, 2000, 2500), rotational_stiffness=(100, 150, 200),
                             torque_rate_limit=10.0, **extras)
    for _ in range(5):
        jac, pos, quat, q, dq, coriolis, target = random_case(error_scale)
        controller = ImpedanceController(params, tau_limit=np.full(7, 1e6))
        controller.reset(q_nullspace=np.zeros(7))
        controller.gains[RATE] = 1e9  # lift the rate limit to compare one tick with the reference
        tau = run(controller, jac, pos, quat, q, dq, coriolis, target)
        expected_tau, expected_force = reference_law(jac, pos, quat, q, dq, coriolis, target, params, np.zeros(7))
        np.testing.assert_allclose(controller.force, expected_force, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(tau, expected_tau, rtol=1e-6, atol=1e-4)  # regularised J Jᵀ


def test_clipping_bounds_the_spring_force():
    controller = ImpedanceController(ImpedanceParams(), tau_limit=np.full(7, 1e6))
    jac = np.eye(6, 7)
    far = np.r_[1.0, -2.0, 0.5]  # metres away from the target
    rotated = P.rotvec_to_quat([0, 0, 1.0])  # 1 rad about z from the target
    run(controller, jac, far, rotated, np.zeros(7), np.zeros(7), np.zeros(7), np.r_[0, 0, 0, 0, 0, 0, 1.0])
    np.testing.assert_allclose(controller.force, [-20, 20, -20, 0, 0, -150 * 0.05], atol=1e-9)


def test_rotational_error_is_franka_half_angle_vector():
    controller = ImpedanceController(ImpedanceParams(rotational_clip=(1, 1, 1)), tau_limit=np.full(7, 1e6))
    current = P.quat_multiply(P.rotvec_to_quat([0.0, 0.04, 0.0]), DOWN)
    run(controller, np.eye(6, 7), np.zeros(3), current, np.zeros(7), np.zeros(7), np.zeros(7), np.r_[0, 0, 0, DOWN])
    np.testing.assert_allclose(controller.force[3:], [0, -150 * np.sin(0.02), 0], atol=1e-9)
    # −q is the same orientation: the error must not flip
    run(controller, np.eye(6, 7), np.zeros(3), -current, np.zeros(7), np.zeros(7), np.zeros(7), np.r_[0, 0, 0, DOWN])
    np.testing.assert_allclose(controller.force[3:], [0, -150 * np.sin(0.02), 0], atol=1e-9)


def test_damping_opposes_velocity_and_defaults_to_critical():
    controller = ImpedanceController(ImpedanceParams(), tau_limit=np.full(7, 1e6))
    dq = np.r_[0.1, 0, 0, 0, 0, 0, 0]  # with J = [I 0]: ẋ = 0.1 m/s
    run(controller, np.eye(6, 7), np.zeros(3), DOWN, np.zeros(7), dq, np.zeros(7), np.r_[0, 0, 0, DOWN])
    assert controller.force[0] == pytest.approx(-2 * np.sqrt(2000) * 0.1)


def test_torque_rate_limit_and_torque_limit():
    controller = ImpedanceController(ImpedanceParams(torque_rate_limit=0.5), tau_limit=np.array([87.0] * 4 + [12.0] * 3))
    jac, pos, quat, q, dq, coriolis, target = random_case(0.5)
    coriolis = np.full(7, 1000.0)  # desired torque far above every limit, whatever the random case
    taus = [run(controller, jac, pos, quat, q, dq, coriolis, target) for _ in range(200)]
    steps = np.abs(np.diff(np.vstack([np.zeros(7)] + taus), axis=0))
    assert steps.max() <= 0.5 + 1e-12
    np.testing.assert_allclose(taus[-1], [87.0] * 4 + [12.0] * 3)


def test_nullspace_torque_makes_no_task_force():
    controller = ImpedanceController(ImpedanceParams(translational_stiffness=(0, 0, 0), rotational_stiffness=(0, 0, 0),
                                                     translational_damping=(0, 0, 0), rotational_damping=(0, 0, 0),
                                                     nullspace_stiffness=50.0, torque_rate_limit=10.0),
                                     tau_limit=np.full(7, 1e6))
    jac, pos, quat, q, dq, _, target = random_case()
    null_direction = np.linalg.svd(jac)[2][-1]  # the arm's one self-motion direction
    controller.reset(q_nullspace=q + 0.05 * null_direction)  # a posture pull of 2.5 Nm, below the rate limit
    tau = run(controller, jac, pos, quat, q, np.zeros(7), np.zeros(7), target)
    assert np.linalg.norm(tau) > 1.0  # the posture pull is there ...
    assert np.linalg.norm(np.linalg.pinv(jac.T) @ tau) < 1e-6 * np.linalg.norm(tau)  # ... but produces no wrench


def test_coriolis_is_bias_minus_gravity():
    controller = ImpedanceController(ImpedanceParams(torque_rate_limit=10.0), tau_limit=np.full(7, 1e6))
    bias, gravity = np.arange(7.0), np.full(7, 0.5)
    xmat = P.quat_to_matrix(DOWN).reshape(9)
    controller.reset(np.zeros(7))
    tau = controller.compute(np.zeros((3, 7)), np.zeros((3, 7)), np.zeros(3), xmat, np.zeros(7), np.zeros(7),
                             bias, gravity, np.r_[0, 0, 0, DOWN])
    np.testing.assert_allclose(tau, bias - gravity)


@pytest.mark.parametrize("field, params", [
    ("translational_stiffness", ImpedanceParams(translational_stiffness=(1e5, 0, 0))),
    ("rotational_stiffness", ImpedanceParams(rotational_stiffness=(np.nan, 1, 1))),
    ("translational_damping", ImpedanceParams(translational_damping=(-1, 1, 1))),
    ("translational_clip", ImpedanceParams(translational_clip=(0.01, 0.01))),
    ("rotational_clip", ImpedanceParams(rotational_clip=(0.0, 0.01, 0.01))),
    ("translational_clip_neg", ImpedanceParams(translational_clip_neg=(0.01, 0.0, 0.01))),
    ("rotational_clip_neg", ImpedanceParams(rotational_clip_neg=(0.05, 0.05, 4.0))),
    ("translational_ki", ImpedanceParams(translational_ki=(-1.0, 0.0, 0.0))),
    ("rotational_ki", ImpedanceParams(rotational_ki=(0.0, np.nan, 0.0))),
    ("nullspace_stiffness", ImpedanceParams(nullspace_stiffness=1e4)),
    ("torque_rate_limit", ImpedanceParams(torque_rate_limit=np.inf)),
])
def test_bad_params_raise_naming_the_field_and_change_nothing(field, params):
    controller = ImpedanceController(ImpedanceParams(translational_stiffness=(1000, 1000, 1000)))
    before = controller.gains.copy()
    with pytest.raises(ValueError, match=field):
        controller.set_params(params)
    np.testing.assert_array_equal(controller.gains, before)
    assert controller.params.translational_stiffness.tolist() == [1000, 1000, 1000]


def test_params_change_at_run_time():
    controller = ImpedanceController()
    controller.set_params(ImpedanceParams(translational_stiffness=(3000, 3000, 3000), translational_clip=(0.02,) * 3))
    run(controller, np.eye(6, 7), np.r_[1.0, 0, 0], DOWN, np.zeros(7), np.zeros(7), np.zeros(7), np.r_[0, 0, 0, DOWN])
    assert controller.force[0] == pytest.approx(-3000 * 0.02)


def test_matrix_to_quat_kernel_matches_pose_module():
    for matrix in [np.eye(3), np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1]),
                   P.quat_to_matrix(P.normalize_quat(RNG.normal(size=4)))]:
        q = matrix_to_quat_xyzw(matrix.reshape(9).copy(), np.empty(4))
        np.testing.assert_allclose(P.quat_to_matrix(q), matrix, atol=1e-12)


def test_asymmetric_clip_bounds_the_spring_force_per_direction():
    params = ImpedanceParams(translational_clip=(0.01, 0.01, 0.02), translational_clip_neg=(0.002, 0.005, 0.02),
                             rotational_clip=(0.05, 0.05, 0.05), rotational_clip_neg=(0.05, 0.05, 0.01))
    controller = ImpedanceController(params, tau_limit=np.full(7, 1e6))
    target = np.r_[0, 0, 0, 0, 0, 0, 1.0]
    run(controller, np.eye(6, 7), np.r_[1.0, -1.0, -1.0], P.rotvec_to_quat([0, 0, -1.0]), np.zeros(7), np.zeros(7),
        np.zeros(7), target)  # below the target on y, z and about z: the clip_neg side
    np.testing.assert_allclose(controller.force, [-2000 * 0.01, 2000 * 0.005, 2000 * 0.02, 0, 0, 150 * 0.01], atol=1e-9)
    run(controller, np.eye(6, 7), np.r_[-1.0, 1.0, 1.0], P.rotvec_to_quat([0, 0, 1.0]), np.zeros(7), np.zeros(7),
        np.zeros(7), target)
    np.testing.assert_allclose(controller.force, [2000 * 0.002, -2000 * 0.01, -2000 * 0.02, 0, 0, -150 * 0.05], atol=1e-9)


def test_clip_neg_none_or_equal_to_clip_is_the_symmetric_law():
    symmetric = ImpedanceController(ImpedanceParams())
    explicit = ImpedanceController(ImpedanceParams(translational_clip_neg=(0.01,) * 3, rotational_clip_neg=(0.05,) * 3))
    np.testing.assert_array_equal(symmetric.gains, explicit.gains)


def test_integral_is_summed_per_tick_and_bounded_by_serls_anti_windup():
    params = ImpedanceParams(translational_ki=(20.0, 0, 0), rotational_ki=(0, 0, 2.0))
    controller = ImpedanceController(params, tau_limit=np.full(7, 1e6))
    far, turned, target = np.r_[1.0, 0, 0], P.rotvec_to_quat([0, 0, 1.0]), np.r_[0, 0, 0, 0, 0, 0, 1.0]
    for tick in range(1, 4):  # the clipped error (0.01 m, 0.05 rad) adds up once per tick
        run(controller, np.eye(6, 7), far, turned, np.zeros(7), np.zeros(7), np.zeros(7), target)
        np.testing.assert_allclose(controller.integral, [0.01 * tick, 0, 0, 0, 0, 0.05 * tick], atol=1e-12)
    assert controller.force[0] == pytest.approx(-2000 * 0.01 - 20.0 * 0.03)
    for _ in range(100):
        run(controller, np.eye(6, 7), far, turned, np.zeros(7), np.zeros(7), np.zeros(7), target)
    np.testing.assert_allclose(controller.integral, [0.1, 0, 0, 0, 0, 0.3], atol=1e-12)  # SERL's bound
    np.testing.assert_allclose(controller.force[[0, 5]], [-2000 * 0.01 - 20.0 * 0.1, -150 * 0.05 - 2.0 * 0.3])


def test_integral_restarts_when_the_equilibrium_moves_on_reset_and_on_new_params():
    controller = ImpedanceController(ImpedanceParams(translational_ki=(20.0,) * 3), tau_limit=np.full(7, 1e6))
    target = np.r_[0, 0, 0, DOWN]

    def tick(goal):
        run(controller, np.eye(6, 7), np.r_[0.005, 0, 0], DOWN, np.zeros(7), np.zeros(7), np.zeros(7), goal)

    for _ in range(5):
        tick(target)
    tick(np.r_[0, 0, 0, -DOWN])  # the same equilibrium re-sent (q ≡ −q): the sum goes on
    assert controller.integral[0] == pytest.approx(0.03)
    tick(target + np.r_[0.001, 0, 0, 0, 0, 0, 0])  # moved: starts from this tick's error
    assert controller.integral[0] == pytest.approx(0.004)
    controller.reset(np.zeros(7))
    np.testing.assert_array_equal(controller.integral, np.zeros(6))
    tick(target)
    controller.set_params(ImpedanceParams(translational_ki=(10.0,) * 3))
    np.testing.assert_array_equal(controller.integral, np.zeros(6))


def test_zero_ki_leaves_the_law_exactly_as_without_the_integral_term():
    jac, _, _, q, dq, coriolis, target = random_case()
    pos = target[:3] + [0.2, -0.2, 0.2]  # far outside the clip on every axis
    quat = P.quat_multiply(P.rotvec_to_quat(np.array([0.5, -0.5, 0.5])), target[3:])
    fresh = ImpedanceController(ImpedanceParams(), tau_limit=np.full(7, 1e6))
    wound = ImpedanceController(ImpedanceParams(), tau_limit=np.full(7, 1e6))
    for _ in range(50):  # saturate the sum, then compare one more tick bit for bit
        run(wound, jac, pos, quat, q, dq, coriolis, target)
    assert np.all(np.abs(wound.integral) > 0.09)
    wound.tau[:] = 0.0
    np.testing.assert_array_equal(run(wound, jac, pos, quat, q, dq, coriolis, target),
                                  run(fresh, jac, pos, quat, q, dq, coriolis, target))
    np.testing.assert_array_equal(wound.force, fresh.force)


def _error_under_a_constant_push(ki: float, push: float = 1.0) -> tuple[float, np.ndarray]:
    """Twin (lockstep): the hand pushed down by ``push`` N for 2 s; (height error m, integral sums)."""
    with TwinBackend(TwinConfig(scene="empty")) as twin:
        twin.set_impedance(ImpedanceParams(translational_ki=(ki,) * 3))
        twin.advance(0.3)
        goal = twin.state().target_pose
        twin.data.xfrc_applied[twin.model.body("hand").id, :3] = [0.0, 0.0, -push]  # an unmodelled payload
        twin.advance(2.0)
        return float(twin.state().tcp_pose[2] - goal[2]), twin.controller.integral.copy()


def test_integral_removes_the_steady_state_error_of_a_constant_force():
    without, _ = _error_under_a_constant_push(ki=0.0)
    assert without == pytest.approx(-1.0 / 2000, rel=0.1)  # F / K
    with_integral, integral = _error_under_a_constant_push(ki=12.0)
    assert abs(with_integral) < 0.05 * abs(without)
    assert integral[2] == pytest.approx(-1.0 / 12.0, rel=0.05)  # Ki·Σ carries the push


def test_integral_windup_bound_limits_what_it_can_carry():
    error, integral = _error_under_a_constant_push(ki=5.0)  # at most 5 · 0.1 = 0.5 N of the 1 N
    assert integral[2] == pytest.approx(-0.1)
    assert error == pytest.approx(-(1.0 - 0.5) / 2000, rel=0.1)


@pytest.mark.parametrize("params, field", [
    (ImpedanceParams(translational_ki=(0.0, 0.1, 0.0)), "translational_ki"),
    (ImpedanceParams(rotational_ki=(1.0, 1.0, 1.0)), "rotational_ki"),
    (ImpedanceParams(translational_clip_neg=(0.01, 0.01, 0.005)), "translational_clip_neg"),
    (ImpedanceParams(rotational_clip=(0.1,) * 3, rotational_clip_neg=(0.05,) * 3), "rotational_clip_neg"),
])
def test_controllers_without_integral_or_asymmetric_clip_refuse_them_naming_the_field(params, field):
    from robot_servers.ros2 import crisp

    with pytest.raises(ValueError, match=field):
        params.validate().require_plain_law("franky's CartesianImpedanceTracker")
    with pytest.raises(ValueError, match=f"{field}: crisp_controllers"):  # what Ros2Backend.set_impedance sends
        crisp.impedance_to_parameters(params)
    plain = ImpedanceParams(translational_clip_neg=(0.01,) * 3).validate()  # equal sides: the symmetric law
    assert plain.require_plain_law("crisp_controllers") is plain
