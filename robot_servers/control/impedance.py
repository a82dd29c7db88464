"""Cartesian impedance law of SERL's controller (serl_franka_controllers), numpy (+ numba when installed).

Per 1 kHz tick::

    e      = [p − p_d ; vec(q ⊗ q_d⁻¹)]            base frame, w ≥ 0 (as franka_ros: ≈ half the angle)
    ē      = clip(e, −clip_neg, clip)               per-axis clip: the key to safe stiff gains
    Σ      = bound(Σ + ē)                           SERL's integral: a sum per tick, |Σ| ≤ 0.1 m / 0.3 rad
    F      = −K·ē − D·(J·dq) − Ki·Σ                 (no Ki term at all where Ki = 0)
    τ_task = Jᵀ F
    τ_ns   = (I − Jᵀ J^{T+}) (k_ns ⊙ (q_ns − q) − 2√k_ns ⊙ dq)     joint 1 with its own k_ns
    τ      = rate_limit(τ_task + τ_ns + coriolis, τ_prev)            |Δτ| ≤ limit per tick

Gravity is not part of the law: the arm's firmware compensates it (the twin does it with
MuJoCo's ``gravcomp``). The integral Σ is SERL's: the clipped error summed every tick (not times dt),
each axis held within SERL's anti-windup bound, and zeroed when the equilibrium moves (SERL zeroes it
on every new equilibrium message; re-sending the same pose keeps it here), on ``reset`` and on
``set_params``. ``impedance_kernel`` is the pure array function; ``ImpedanceController`` owns the gains
(validated ``ImpedanceParams``), the integral and the torque history.
"""

from __future__ import annotations

import numpy as np

from robot_servers.backends.base import ImpedanceParams

try:  # numba makes one tick ~1 µs instead of ~30 µs; the same code runs (slowly) without it
    import numba

    _jit = numba.njit(cache=True)
    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is in the sim extra
    HAVE_NUMBA = False

    def _jit(function):
        return function

# Layout of the packed gain vector (one array keeps the per-tick call cheap and the compiled loop's
# arguments fixed): 6 stiffnesses, 6 dampings, 6 lower clips, 6 upper clips, 6 integral gains, the
# rate limit, the law's memory (6 integral sums, the 7-value equilibrium they were summed against),
# then per joint: nullspace stiffness, nullspace damping, torque limit.
K0, D0, CLIP_LOW0, CLIP_HIGH0, KI0, RATE, INTEGRAL0, ANCHOR0, JOINTS0 = 0, 6, 12, 18, 24, 30, 31, 37, 44
K, D, KI = slice(K0, K0 + 6), slice(D0, D0 + 6), slice(KI0, KI0 + 6)
CLIP_LOW, CLIP_HIGH = slice(CLIP_LOW0, CLIP_LOW0 + 6), slice(CLIP_HIGH0, CLIP_HIGH0 + 6)
INTEGRAL, ANCHOR = slice(INTEGRAL0, INTEGRAL0 + 6), slice(ANCHOR0, ANCHOR0 + 7)
INTEGRAL_BOUND_TRANSLATIONAL, INTEGRAL_BOUND_ROTATIONAL = 0.1, 0.3  # SERL's anti-windup bound per axis
EQUILIBRIUM_MOVED = 1e-5  # m, or quaternion component: beyond it the integral starts again from zero


def _joint_slices(n: int) -> tuple[slice, slice, slice]:
    """(nullspace stiffness, nullspace damping, torque limit) slices of the gain vector for n joints."""
    return slice(JOINTS0, JOINTS0 + n), slice(JOINTS0 + n, JOINTS0 + 2 * n), slice(JOINTS0 + 2 * n, JOINTS0 + 3 * n)


PANDA_TORQUE_LIMITS = np.array([87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0])  # Nm
NULLSPACE_REGULARIZATION = 1e-8  # keeps J·Jᵀ invertible at singular poses (projector stays in [0, 1])


@_jit
def matrix_to_quat_xyzw(rot, out):
    """Unit quaternion [x, y, z, w] of a rotation matrix given as 9 values row-major, into ``out``."""
    r = rot
    trace = r[0] + r[4] + r[8]
    if trace > 0.0:
        s = 2.0 * np.sqrt(trace + 1.0)
        out[0] = (r[7] - r[5]) / s
        out[1] = (r[2] - r[6]) / s
        out[2] = (r[3] - r[1]) / s
        out[3] = 0.25 * s
    elif r[0] > r[4] and r[0] > r[8]:
        s = 2.0 * np.sqrt(1.0 + r[0] - r[4] - r[8])
        out[0] = 0.25 * s
        out[1] = (r[1] + r[3]) / s
        out[2] = (r[2] + r[6]) / s
        out[3] = (r[7] - r[5]) / s
    elif r[4] > r[8]:
        s = 2.0 * np.sqrt(1.0 + r[4] - r[0] - r[8])
        out[0] = (r[1] + r[3]) / s
        out[1] = 0.25 * s
        out[2] = (r[5] + r[7]) / s
        out[3] = (r[2] - r[6]) / s
    else:
        s = 2.0 * np.sqrt(1.0 + r[8] - r[0] - r[4])
        out[0] = (r[2] + r[6]) / s
        out[1] = (r[5] + r[7]) / s
        out[2] = 0.25 * s
        out[3] = (r[3] - r[1]) / s
    return out


@_jit
def pose_error_franka(pos, xmat, target, error):
    """Unclipped 6-D error [p − p_d, vec(q ⊗ q_d⁻¹)] (base frame, shortest way) into ``error``.

    ``target`` is xyz + quat xyzw. The rotational part is franka_ros'/SERL's: the vector part of
    the error quaternion, sin(θ/2)·axis.
    """
    quat = np.empty(4)
    matrix_to_quat_xyzw(xmat, quat)
    ax, ay, az, aw = quat[0], quat[1], quat[2], quat[3]
    bx, by, bz, bw = -target[3], -target[4], -target[5], target[6]
    ex = aw * bx + ax * bw + ay * bz - az * by
    ey = aw * by - ax * bz + ay * bw + az * bx
    ez = aw * bz + ax * by - ay * bx + az * bw
    ew = aw * bw - ax * bx - ay * by - az * bz
    sign = -1.0 if ew < 0.0 else 1.0
    error[0] = pos[0] - target[0]
    error[1] = pos[1] - target[1]
    error[2] = pos[2] - target[2]
    error[3] = sign * ex
    error[4] = sign * ey
    error[5] = sign * ez
    return error


@_jit
def restart_integral_if_moved(target, gains):
    """Zero the integral sums when ``target`` left the equilibrium they were summed against (q ≡ −q)."""
    held, same, flipped = True, True, True  # written as "<=" so that the NaN anchor (none yet) counts as moved
    for i in range(3):
        held = held and abs(target[i] - gains[ANCHOR0 + i]) <= EQUILIBRIUM_MOVED
    for i in range(3, 7):
        same = same and abs(target[i] - gains[ANCHOR0 + i]) <= EQUILIBRIUM_MOVED
        flipped = flipped and abs(target[i] + gains[ANCHOR0 + i]) <= EQUILIBRIUM_MOVED
    if held and (same or flipped):
        return
    for i in range(6):
        gains[INTEGRAL0 + i] = 0.0
    for i in range(7):
        gains[ANCHOR0 + i] = target[i]


@_jit
def impedance_kernel(jacp, jacr, pos, xmat, qpos, qvel, bias, gravcomp, target, gains, q_ns, tau, force, ctrl):
    """One tick of the law for the first ``n = len(q_ns)`` dofs.

    jacp/jacr: (3, nv) TCP Jacobians; bias − gravcomp is the Coriolis/centrifugal torque (MuJoCo's
    ``qfrc_bias`` minus its gravity part); ``target`` xyz + quat xyzw; ``gains`` the packed vector
    (see ``ImpedanceController``; its integral sums are updated here). ``tau`` holds the previous
    torque on entry (rate limit) and the new one on exit; ``force`` receives −K·ē − D·ẋ − Ki·Σ;
    ``ctrl[:n]`` receives ``tau``.
    """
    n = q_ns.shape[0]
    jac = np.empty((6, n))
    for j in range(n):
        for i in range(3):
            jac[i, j] = jacp[i, j]
            jac[3 + i, j] = jacr[i, j]
    error = np.empty(6)
    pose_error_franka(pos, xmat, target, error)
    restart_integral_if_moved(target, gains)
    for i in range(6):
        clipped = min(max(error[i], gains[CLIP_LOW0 + i]), gains[CLIP_HIGH0 + i])
        bound = INTEGRAL_BOUND_TRANSLATIONAL if i < 3 else INTEGRAL_BOUND_ROTATIONAL
        summed = min(max(gains[INTEGRAL0 + i] + clipped, -bound), bound)
        gains[INTEGRAL0 + i] = summed
        twist = 0.0
        for j in range(n):
            twist += jac[i, j] * qvel[j]
        force[i] = -gains[K0 + i] * clipped - gains[D0 + i] * twist
        if gains[KI0 + i] != 0.0:  # skipped, not multiplied by 0: Ki = 0 is exactly the law without the term
            force[i] -= gains[KI0 + i] * summed
    # Nullspace projector I − Jᵀ(J Jᵀ)⁻¹J applied to the posture torque.
    jjt = jac @ jac.T
    for i in range(6):
        jjt[i, i] += NULLSPACE_REGULARIZATION
    posture = np.empty(n)
    for j in range(n):
        posture[j] = gains[JOINTS0 + j] * (q_ns[j] - qpos[j]) - gains[JOINTS0 + n + j] * qvel[j]
    projected = jac.T @ np.linalg.solve(jjt, jac @ posture)
    rate = gains[RATE]
    for j in range(n):
        task = 0.0
        for i in range(6):
            task += jac[i, j] * force[i]
        desired = task + posture[j] - projected[j] + bias[j] - gravcomp[j]
        step = min(max(desired - tau[j], -rate), rate)
        limit = gains[JOINTS0 + 2 * n + j]
        tau[j] = min(max(tau[j] + step, -limit), limit)
        ctrl[j] = tau[j]
    return tau


@_jit
def filter_target(target, command, alpha):
    """SERL's per-tick target low-pass: ``target`` moves the fraction ``alpha`` towards ``command``
    (position linearly, orientation by normalised lerp on the same hemisphere). ``alpha ≥ 1`` copies."""
    if alpha >= 1.0:
        for i in range(7):
            target[i] = command[i]
        return target
    for i in range(3):
        target[i] += alpha * (command[i] - target[i])
    dot = target[3] * command[3] + target[4] * command[4] + target[5] * command[5] + target[6] * command[6]
    sign = -1.0 if dot < 0.0 else 1.0
    norm = 0.0
    for i in range(3, 7):
        target[i] += alpha * (sign * command[i] - target[i])
        norm += target[i] * target[i]
    norm = np.sqrt(norm)
    for i in range(3, 7):
        target[i] /= norm
    return target


class ImpedanceController:
    """The law with its gains and torque history. ``set_params`` validates first (ValueError
    naming the field, nothing changed); ``compute`` runs one tick."""

    def __init__(self, params: ImpedanceParams | None = None, n_joints: int = 7,
                 tau_limit: np.ndarray = PANDA_TORQUE_LIMITS):
        self.n_joints = n_joints
        self._k_ns, self._d_ns, self._tau_limit = _joint_slices(n_joints)
        self.gains = np.zeros(JOINTS0 + 3 * n_joints)
        self.gains[self._tau_limit] = tau_limit
        self.q_ns = np.zeros(n_joints)
        self.tau = np.zeros(n_joints)  # last commanded torque (input to the rate limit)
        self.force = np.zeros(6)  # last commanded task-space force/torque
        self._ctrl = np.zeros(n_joints)
        self.params = ImpedanceParams().validate()
        self.set_params(params or ImpedanceParams())

    @property
    def tau_limit(self) -> np.ndarray:
        return self.gains[self._tau_limit]

    @property
    def stiffness(self) -> np.ndarray:
        return self.gains[K]

    @property
    def damping(self) -> np.ndarray:
        return self.gains[D]

    @property
    def integral(self) -> np.ndarray:
        """The integral sums Σ (6, a view: translational m·ticks, rotational rad·ticks)."""
        return self.gains[INTEGRAL]

    @staticmethod
    def _restart_integral(gains: np.ndarray) -> None:
        gains[INTEGRAL] = 0.0
        gains[ANCHOR] = np.nan

    def set_params(self, params: ImpedanceParams) -> None:
        if not isinstance(params, ImpedanceParams):
            raise ValueError(f"params: expected ImpedanceParams, got {type(params).__name__}")
        params = params.validate()
        trans_damping, rot_damping = params.damping()
        clip_low, clip_high = params.clip_bounds()
        k_ns = np.full(self.n_joints, params.nullspace_stiffness)
        k_ns[0] = params.joint1_nullspace_stiffness
        gains = self.gains.copy()
        gains[K] = np.concatenate([params.translational_stiffness, params.rotational_stiffness])
        gains[D] = np.concatenate([trans_damping, rot_damping])
        gains[CLIP_LOW] = clip_low
        gains[CLIP_HIGH] = clip_high
        gains[KI] = np.concatenate([params.translational_ki, params.rotational_ki])
        gains[RATE] = params.torque_rate_limit
        self._restart_integral(gains)  # a sum under other clips or gains means nothing to the new law
        gains[self._k_ns] = k_ns
        gains[self._d_ns] = 2.0 * np.sqrt(k_ns)
        self.gains[:] = gains
        self.params = params

    def reset(self, q_nullspace: np.ndarray, tau: np.ndarray | None = None) -> None:
        """New nullspace posture (joint config at controller start), torque history, no integral."""
        self.q_ns[:] = q_nullspace
        self.tau[:] = 0.0 if tau is None else tau
        self._restart_integral(self.gains)

    def compute(self, jacp, jacr, pos, xmat, qpos, qvel, bias, gravcomp, target, ctrl=None) -> np.ndarray:
        """Joint torques for one tick (written into ``ctrl`` when given; kept for the rate limit)."""
        impedance_kernel(jacp, jacr, pos, xmat, qpos, qvel, bias, gravcomp, target, self.gains, self.q_ns,
                         self.tau, self.force, self._ctrl if ctrl is None else ctrl)
        return self.tau
