"""Pose math (robot_servers/control/pose.py) against hand-computed values and round trips."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from robot_servers.control import pose as P
from robot_servers.control.impedance import matrix_to_quat_xyzw

S = np.sqrt(0.5)
QZ90 = np.array([0.0, 0.0, S, S])  # +90° about z
QX180 = np.array([1.0, 0.0, 0.0, 0.0])  # gripper pointing down


def rx(a):
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def ry(a):
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def rz(a):
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def same_rotation(a, b, atol=1e-9):
    return np.allclose(P.quat_to_matrix(a), P.quat_to_matrix(b), atol=atol)


def matrix_to_quat(matrix):
    """The controller's kernel on a 3×3 matrix, as the representative with w ≥ 0."""
    q = matrix_to_quat_xyzw(np.asarray(matrix, dtype=np.float64).reshape(9).copy(), np.empty(4))
    assert np.linalg.norm(q) == pytest.approx(1.0, abs=1e-12)
    return P.normalize_quat(q)


unit_quats = st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(
    lambda v: np.linalg.norm(v) > 0.1).map(lambda v: P.normalize_quat(np.array(v)))
small_vectors = st.lists(st.floats(-0.5, 0.5), min_size=3, max_size=3).map(np.array)


def test_normalize_quat_scales_and_picks_nonnegative_w():
    np.testing.assert_allclose(P.normalize_quat([0, 0, 0, 2.0]), [0, 0, 0, 1])
    np.testing.assert_allclose(P.normalize_quat([0, 0, -S, -S]), [0, 0, S, S])
    with pytest.raises(ValueError):
        P.normalize_quat([0, 0, 0, 0])


def test_quat_multiply_composes_rotations():
    np.testing.assert_allclose(P.quat_multiply(QZ90, QZ90), [0, 0, 1, 0], atol=1e-12)
    # b first, then a: rotate x by 90° about z then 180° about x → -y
    q = P.quat_multiply(QX180, QZ90)
    np.testing.assert_allclose(P.rotate(q, [1, 0, 0]), [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(P.quat_multiply(QZ90, P.quat_conjugate(QZ90)), [0, 0, 0, 1], atol=1e-12)


def test_quat_to_matrix_known_values():
    np.testing.assert_allclose(P.quat_to_matrix(QZ90), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(P.quat_to_matrix(QX180), np.diag([1, -1, -1]), atol=1e-12)


@pytest.mark.parametrize("matrix", [rz(0.3), rx(np.pi), ry(np.pi), rz(np.pi), rx(2.5) @ ry(-0.4), np.eye(3)])
def test_matrix_to_quat_every_branch(matrix):
    q = matrix_to_quat(matrix)
    assert q[3] >= 0
    np.testing.assert_allclose(P.quat_to_matrix(q), matrix, atol=1e-12)


@pytest.mark.parametrize("matrix", [rz(0.3), rx(np.pi), ry(np.pi), rz(np.pi), rx(2.5) @ ry(-0.4), np.eye(3)])
def test_matrix_to_quat_matches_scipy(matrix):
    rotation = pytest.importorskip("scipy.spatial.transform").Rotation
    expected = P.normalize_quat(rotation.from_matrix(matrix).as_quat())  # scipy is [x, y, z, w] too
    q = matrix_to_quat(matrix)
    assert np.allclose(q, expected, atol=1e-12) or np.allclose(q, -expected, atol=1e-12)  # w = 0: ±q


def test_rotvec_known_values():
    np.testing.assert_allclose(P.quat_to_rotvec(QZ90), [0, 0, np.pi / 2], atol=1e-12)
    np.testing.assert_allclose(P.rotvec_to_quat([np.pi, 0, 0]), QX180, atol=1e-12)
    np.testing.assert_allclose(P.rotvec_to_quat([0, 0, 0]), [0, 0, 0, 1])
    np.testing.assert_allclose(P.quat_to_rotvec([0, 0, 0, 1]), [0, 0, 0])


def test_euler_is_extrinsic_xyz():
    roll, pitch, yaw = 0.1, -0.2, 0.3
    q = P.euler_to_quat([roll, pitch, yaw])
    np.testing.assert_allclose(P.quat_to_matrix(q), rz(yaw) @ ry(pitch) @ rx(roll), atol=1e-12)
    np.testing.assert_allclose(P.quat_to_euler(q), [roll, pitch, yaw], atol=1e-12)
    np.testing.assert_allclose(P.quat_to_euler(QX180), [np.pi, 0, 0], atol=1e-12)


def test_euler_gimbal_lock_keeps_the_rotation():
    q = P.euler_to_quat([0.4, np.pi / 2, 0.1])
    assert same_rotation(P.euler_to_quat(P.quat_to_euler(q)), q)


def test_orientation_and_pose_error():
    desired = QX180
    current = P.quat_multiply(P.rotvec_to_quat([0, 0, 0.05]), desired)
    np.testing.assert_allclose(P.orientation_error(current, desired), [0, 0, 0.05], atol=1e-12)
    err = P.pose_error(np.r_[0.5, 0.1, 0.2, current], np.r_[0.4, 0.1, 0.25, desired])
    np.testing.assert_allclose(err, [0.1, 0, -0.05, 0, 0, 0.05], atol=1e-12)


def test_apply_delta_base_and_ee_frames():
    pose = np.r_[0.5, 0.0, 0.3, QX180]  # gripper pointing down: ee z = base −z, ee y = base −y
    moved = P.apply_delta(pose, [0, 0.01, 0.02, 0, 0, 0], frame="ee")
    np.testing.assert_allclose(moved[:3], [0.5, -0.01, 0.28], atol=1e-12)
    moved = P.apply_delta(pose, [0, 0.01, 0.02, 0, 0, 0], frame="base")
    np.testing.assert_allclose(moved[:3], [0.5, 0.01, 0.32], atol=1e-12)
    turned = P.apply_delta(pose, [0, 0, 0, 0, 0, 0.1], frame="ee")  # about ee z = base −z
    np.testing.assert_allclose(P.orientation_error(turned[3:], QX180), [0, 0, -0.1], atol=1e-12)
    turned = P.apply_delta(pose, [0, 0, 0, 0, 0, 0.1], frame="base")
    np.testing.assert_allclose(P.orientation_error(turned[3:], QX180), [0, 0, 0.1], atol=1e-12)
    with pytest.raises(ValueError, match="frame"):
        P.apply_delta(pose, np.zeros(6), frame="tool")


def test_relative_pose_known_value():
    reference = np.r_[1.0, 0.0, 0.0, QZ90]
    local = P.relative_pose(np.r_[1.0, 1.0, 0.0, QZ90], reference)
    np.testing.assert_allclose(local, [1, 0, 0, 0, 0, 0, 1], atol=1e-12)


def test_mujoco_quaternion_order():
    np.testing.assert_allclose(P.wxyz_to_xyzw([1, 2, 3, 4]), [2, 3, 4, 1])
    np.testing.assert_allclose(P.xyzw_to_wxyz([2, 3, 4, 1]), [1, 2, 3, 4])


@settings(max_examples=60, deadline=None)
@given(unit_quats)
@example(np.array([7.07106781e-01, 7.07106781e-06, 7.07106781e-01, 0.0]))  # 1e-5 rad from gimbal lock
def test_matrix_and_euler_round_trips(q):
    assert same_rotation(matrix_to_quat(P.quat_to_matrix(q)), q)
    assert same_rotation(P.euler_to_quat(P.quat_to_euler(q)), q, atol=1e-7)
    assert same_rotation(P.rotvec_to_quat(P.quat_to_rotvec(q)), q)


@settings(max_examples=60, deadline=None)
@given(unit_quats, unit_quats, small_vectors)
def test_compose_inverts_relative_and_error_inverts_delta(q_ref, q_pose, xyz):
    reference = np.r_[xyz, q_ref]
    pose = np.r_[xyz[::-1], q_pose]
    back = P.compose_pose(reference, P.relative_pose(pose, reference))
    np.testing.assert_allclose(back[:3], pose[:3], atol=1e-9)
    assert same_rotation(back[3:], pose[3:])
    delta = np.r_[xyz, xyz[::-1]]
    moved = P.apply_delta(pose, delta, frame="base")
    np.testing.assert_allclose(P.pose_error(moved, pose), delta, atol=1e-9)
