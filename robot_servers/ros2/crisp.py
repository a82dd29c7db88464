"""crisp_controllers' ``cartesian_impedance_controller`` parameters (crisp >= 2.2), mapped to and from
``ImpedanceParams``. Pure Python: no rclpy needed.

What crisp does with them, as the twin node rehearses it and the ROS 2 backend relies on it:

- ``task.k_*`` are clamped to ``variable_max_stiffness.{translational, rotational}`` (900 N/m and
  60 Nm/rad by default; the rotational cap is bounded by 100) before use;
- ``task.d_*`` > 0 is used as given, otherwise damping is 2·sqrt(``task.k_*``) computed from the
  *unclamped* parameter: the backend therefore always sends explicit damping from the applied stiffness;
- nullspace stiffness per joint is ``nullspace.stiffness`` · ``nullspace.weights.<joint>.value``, damping
  ``nullspace.damping`` · weight when set; the backend always sends a positive ``nullspace.damping``;
- ``nullspace.max_tau`` bounds the nullspace torque of every joint alike.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from robot_servers.backends.base import ImpedanceParams
from robot_servers.limits import IMPEDANCE_LIMITS

AXES = ("x", "y", "z")
FR3_JOINTS = tuple(f"fr3_joint{i}" for i in range(1, 8))
STIFFNESS_MAX = 5000.0  # crisp's validation bound for task.k_*
NULLSPACE_STIFFNESS_MAX = 500.0
MAX_STIFFNESS_BOUNDS = {"translational": 5000.0, "rotational": 100.0}  # bounds of variable_max_stiffness.*
MAX_STIFFNESS_DEFAULTS = {"translational": 900.0, "rotational": 60.0}
FRANKA_TORQUE_RATINGS = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)  # Nm, joints 1..7
PROJECTORS = ("kinematic", "dynamic", "none")
CAP_TRANSLATIONAL = "variable_max_stiffness.translational"
CAP_ROTATIONAL = "variable_max_stiffness.rotational"

STIFFNESS_NAMES = tuple(f"task.k_pos_{a}" for a in AXES) + tuple(f"task.k_rot_{a}" for a in AXES)
DAMPING_NAMES = tuple(f"task.d_pos_{a}" for a in AXES) + tuple(f"task.d_rot_{a}" for a in AXES)
CLIP_NAMES = tuple(f"task.error_clip.{a}" for a in AXES) + tuple(f"task.error_clip.r{a}" for a in AXES)


def weight_name(joint: str) -> str:
    return f"nullspace.weights.{joint}.value"


def defaults(joints: Sequence[str] = FR3_JOINTS) -> dict[str, object]:
    """Every parameter the controller declares that this project reads or sets, with crisp's defaults."""
    out: dict[str, object] = {
        **{n: 500.0 for n in STIFFNESS_NAMES[:3]}, **{n: 30.0 for n in STIFFNESS_NAMES[3:]},
        **{n: -1.0 for n in DAMPING_NAMES},
        **{n: 0.1 for n in CLIP_NAMES[:3]}, **{n: 0.5 for n in CLIP_NAMES[3:]},
        "nullspace.stiffness": 1.0, "nullspace.damping": 0.0, "nullspace.projector_type": "kinematic",
        "nullspace.max_tau": 5.0, "nullspace.regularization": 1e-6,
        **{weight_name(j): 1.0 for j in joints},
        "max_delta_tau": 0.5, "limit_error": True, "limit_torques": True, "stop_commands": False,
        "use_friction": False, "use_coriolis_compensation": False, "use_gravity_compensation": False,
        "use_local_jacobian": False, "use_operational_space": False, "operational_space_regularization": 1e-6,
        CAP_TRANSLATIONAL: MAX_STIFFNESS_DEFAULTS["translational"],
        CAP_ROTATIONAL: MAX_STIFFNESS_DEFAULTS["rotational"],
        "variable_stiffness.enabled": False,
    }
    return out


def check_value(name: str, value) -> str | None:
    """Why crisp would reject ``name = value`` (its validation ranges), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    if isinstance(value, str):
        if name == "nullspace.projector_type" and value not in PROJECTORS:
            return f"{name}: {value!r} is not one of {PROJECTORS}"
        return None
    if not math.isfinite(value):
        return f"{name}: {value} is not finite"
    bounds = {n: (0.0, STIFFNESS_MAX) for n in STIFFNESS_NAMES}
    bounds.update({n: (0.0, math.inf) for n in CLIP_NAMES})
    bounds.update({"nullspace.stiffness": (0.0, NULLSPACE_STIFFNESS_MAX), "nullspace.max_tau": (0.0, math.inf),
                   "max_delta_tau": (0.0, math.inf), CAP_TRANSLATIONAL: (0.0, MAX_STIFFNESS_BOUNDS["translational"]),
                   CAP_ROTATIONAL: (0.0, MAX_STIFFNESS_BOUNDS["rotational"])})
    if name.startswith("nullspace.weights."):
        bounds[name] = (0.0, math.inf)
    low, high = bounds.get(name, (-math.inf, math.inf))
    if not low <= value <= high:
        return f"{name}: {value} outside [{low}, {high}]"
    return None


def required_caps(params: ImpedanceParams) -> tuple[float, float]:
    """The (translational, rotational) ``variable_max_stiffness`` that ``params`` needs to apply unclamped."""
    return float(np.max(params.translational_stiffness)), float(np.max(params.rotational_stiffness))


def raised_caps(params: ImpedanceParams, caps: Mapping[str, float], allowed: bool) -> dict[str, float]:
    """The ``variable_max_stiffness`` values to set first so that ``params`` apply unclamped.

    ValueError naming both numbers when a cap would have to exceed crisp's bound, or must not be raised.
    """
    raised = {}
    for (name, cap), need, field, unit in zip(caps.items(), required_caps(params),
                                              ("translational_stiffness", "rotational_stiffness"), ("N/m", "Nm/rad")):
        if need <= cap:
            continue
        bound = MAX_STIFFNESS_BOUNDS[name.rsplit(".", 1)[1]]
        if need > bound or not allowed:
            why = f"its bound is {bound:g} {unit}" if need > bound else "raise_stiffness_cap is off"
            raise ValueError(f"{field} {need:g} {unit} exceeds the controller's {name} = {cap:g} {unit} "
                             f"and cannot be raised ({why}); crisp would clamp it silently")
        raised[name] = need
    return raised


def impedance_to_parameters(params: ImpedanceParams, joints: Sequence[str] = FR3_JOINTS) -> dict[str, object]:
    """crisp parameter values that make the controller apply ``params`` exactly.

    Damping is explicit (2·sqrt of the stiffness sent, or the given damping), so crisp never derives it
    from a stiffness it clamps; the joint-1 nullspace stiffness becomes a per-joint weight. crisp has a
    symmetric error clip and no integral term: asking for either is a ValueError naming the field.
    """
    params = params.validate().require_plain_law("crisp_controllers")
    kt, kr = np.asarray(params.translational_stiffness), np.asarray(params.rotational_stiffness)
    if np.any(kt > STIFFNESS_MAX) or np.any(kr > STIFFNESS_MAX):
        raise ValueError(f"stiffness: crisp_controllers accepts at most {STIFFNESS_MAX}, got {kt.tolist()} / {kr.tolist()}")
    dt, dr = params.damping()
    out: dict[str, object] = {}
    for i, axis in enumerate(AXES):
        out[f"task.k_pos_{axis}"] = float(kt[i])
        out[f"task.k_rot_{axis}"] = float(kr[i])
        out[f"task.d_pos_{axis}"] = max(float(dt[i]), 1e-6)  # 0 would mean "derive from k" to crisp
        out[f"task.d_rot_{axis}"] = max(float(dr[i]), 1e-6)
        out[f"task.error_clip.{axis}"] = float(params.translational_clip[i])
        out[f"task.error_clip.r{axis}"] = float(params.rotational_clip[i])
    base = max(params.nullspace_stiffness, params.joint1_nullspace_stiffness)
    out["nullspace.stiffness"] = float(base)
    for i, joint in enumerate(joints):
        k = params.joint1_nullspace_stiffness if i == 0 else params.nullspace_stiffness
        out[weight_name(joint)] = float(k / base) if base > 0 else 1.0
    out["nullspace.damping"] = 2.0 * math.sqrt(base) if base > 0 else 1e-6  # positive: never "unset" or negative
    out["max_delta_tau"] = float(params.torque_rate_limit)
    return out


def applied_stiffness(values: Mapping[str, object]) -> np.ndarray:
    """The six task stiffnesses crisp applies: the parameters clamped to ``variable_max_stiffness``."""
    caps = [float(values[CAP_TRANSLATIONAL])] * 3 + [float(values[CAP_ROTATIONAL])] * 3
    return np.clip([float(values[n]) for n in STIFFNESS_NAMES], 0.0, caps)


def applied_damping(values: Mapping[str, object]) -> np.ndarray:
    """The six task dampings crisp applies: explicit when > 0, else 2·sqrt of the *unclamped* parameter."""
    return np.array([float(values[d]) if float(values[d]) > 0 else 2.0 * math.sqrt(max(float(values[k]), 0.0))
                     for d, k in zip(DAMPING_NAMES, STIFFNESS_NAMES)])


def nullspace_gains(values: Mapping[str, object], joints: Sequence[str] = FR3_JOINTS) -> tuple[np.ndarray, np.ndarray]:
    """Per-joint (stiffness, damping) of crisp's nullspace term."""
    weights = np.array([float(values[weight_name(j)]) for j in joints])
    stiffness = float(values["nullspace.stiffness"]) * weights
    damping_value = float(values["nullspace.damping"])
    damping = damping_value * weights if damping_value != 0 else 2.0 * np.sqrt(stiffness)
    return stiffness, damping


def parameters_to_impedance(values: Mapping[str, object], joints: Sequence[str] = FR3_JOINTS) -> ImpedanceParams:
    """The ``ImpedanceParams`` a controller with these parameter values applies (crisp's defaults fill gaps).

    Values beyond this project's limits table are reported as they are (not validated).
    """
    v = {**defaults(joints), **values}
    k, d = applied_stiffness(v), applied_damping(v)
    k_ns, _ = nullspace_gains(v, joints)
    return ImpedanceParams(
        translational_stiffness=tuple(k[:3]), rotational_stiffness=tuple(k[3:]),
        translational_damping=tuple(d[:3]), rotational_damping=tuple(d[3:]),
        translational_clip=tuple(float(v[n]) for n in CLIP_NAMES[:3]),
        rotational_clip=tuple(float(v[n]) for n in CLIP_NAMES[3:]),
        nullspace_stiffness=float(np.mean(k_ns[1:])), joint1_nullspace_stiffness=float(k_ns[0]),
        torque_rate_limit=float(v["max_delta_tau"]),
    )


def within_project_limits(params: ImpedanceParams) -> ImpedanceParams:
    """``params`` clipped into ``robot_servers.limits`` (for the twin, whose law accepts only those)."""
    values = {}
    for name, (low, high, _unit, size) in IMPEDANCE_LIMITS.items():
        value = getattr(params, name)
        values[name] = None if value is None else (
            float(np.clip(value, low, high)) if size == 1 else tuple(np.clip(value, low, high)))
    return ImpedanceParams(**values)


def joint_reset_parameters(stiffness: float, max_tau: float, joints: Sequence[str] = FR3_JOINTS) -> dict[str, object]:
    """Parameters that turn crisp's nullspace term into a joint impedance toward ``target_joint``.

    Task stiffness zero, projector ``none``, equal weights, positive damping 2·sqrt(k), and one torque
    bound for all joints that must respect the smallest Franka rating (12 Nm, joints 5-7).
    """
    if not 0 < stiffness <= NULLSPACE_STIFFNESS_MAX:
        raise ValueError(f"joint reset stiffness: expected (0, {NULLSPACE_STIFFNESS_MAX}] Nm/rad, got {stiffness}")
    if not 0 < max_tau <= min(FRANKA_TORQUE_RATINGS):
        raise ValueError(f"joint reset max torque {max_tau} Nm exceeds the {min(FRANKA_TORQUE_RATINGS)} Nm rating "
                         "of Franka joints 5-7 (crisp's nullspace.max_tau bounds every joint alike)")
    out: dict[str, object] = {n: 0.0 for n in STIFFNESS_NAMES}
    out.update({"nullspace.projector_type": "none", "nullspace.stiffness": float(stiffness),
                "nullspace.damping": 2.0 * math.sqrt(stiffness), "nullspace.max_tau": float(max_tau)})
    out.update({weight_name(j): 1.0 for j in joints})
    return out
