"""The impedance law (robot_servers/control/impedance.py) against an independent numpy reference."""

import numpy as np
import pytest

from robot_servers.backends.base import ImpedanceParams
from robot_servers.control import pose as P
from robot_servers.control.impedance import RATE, ImpedanceController, matrix_to_quat_xyzw

RNG = np.random.default_rng(0)
DOWN = np.array([1.0, 0.0, 0.0, 0.0])


def reference_law(jac, pos, quat, q, dq, coriolis, target, params: ImpedanceParams, q_ns):
    """Textbook form of SERL's law with pinv, no rate limit (compare with a large rate limit)."""
    params = params.validate()
    err_quat = P.quat_multiply(quat, P.quat_conjugate(target[3:]))
    err_quat = err_quat if err_quat[3] >= 0 else -err_quat
    error = np.r_[pos - target[:3], err_quat[:3]]
    clip = np.r_[params.translational_clip, params.rotational_clip]
    stiffness = np.r_[params.translational_stiffness, params.rotational_stiffness]
    damping = np.concatenate(params.damping())
    force = -stiffness * np.clip(error, -clip, clip) - damping * (jac @ dq)
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


@pytest.mark.parametrize("error_scale", [0.002, 0.2])  # inside and far outside the clip box
def test_law_matches_reference(error_scale):
    params = ImpedanceParams(translational_stiffness=(1500, 2000, 2500), rotational_stiffness=(100, 150, 200),
                             torque_rate_limit=10.0)
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
    coriolis = np.full(7, 100.0)  # desired torque far above every limit
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
    controller.reset(q_nullspace=q + 0.05)  # posture torque below the rate limit
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
