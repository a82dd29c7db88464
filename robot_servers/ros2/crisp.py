"""crisp_controllers' Cartesian impedance parameters, mapped to and from ``ImpedanceParams``.

Names and bounds follow crisp_controllers' ``cartesian_controller.yaml`` (``task.k_pos_x``,
``task.d_rot_z`` (negative = critical damping), ``task.error_clip.rx``, ``nullspace.stiffness``,
``max_delta_tau``). Pure Python: no rclpy needed.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from robot_servers.backends.base import ImpedanceParams

AXES = ("x", "y", "z")
STIFFNESS_MAX = 5000.0  # crisp's validation bound for task.k_*
NULLSPACE_STIFFNESS_MAX = 500.0

TASK_PARAMETERS = tuple(
    [f"task.k_pos_{a}" for a in AXES] + [f"task.k_rot_{a}" for a in AXES]
    + [f"task.d_pos_{a}" for a in AXES] + [f"task.d_rot_{a}" for a in AXES]
    + [f"task.error_clip.{a}" for a in AXES] + [f"task.error_clip.r{a}" for a in AXES]
)
ALL_PARAMETERS = TASK_PARAMETERS + (
    "nullspace.stiffness", "nullspace.damping", "nullspace.projector_type", "nullspace.max_tau",
    "max_delta_tau", "limit_error",
)

DEFAULTS: dict[str, object] = {
    **{f"task.k_pos_{a}": 500.0 for a in AXES},
    **{f"task.k_rot_{a}": 30.0 for a in AXES},
    **{f"task.d_pos_{a}": -1.0 for a in AXES},
    **{f"task.d_rot_{a}": -1.0 for a in AXES},
    **{f"task.error_clip.{a}": 0.1 for a in AXES},
    **{f"task.error_clip.r{a}": 0.5 for a in AXES},
    "nullspace.stiffness": 1.0,
    "nullspace.damping": -1.0,
    "nullspace.projector_type": "kinematic",
    "nullspace.max_tau": 5.0,
    "max_delta_tau": 0.5,
    "limit_error": True,
}


def impedance_to_parameters(params: ImpedanceParams) -> dict[str, float]:
    """crisp parameter values for ``params``; ValueError names the field crisp would reject."""
    params = params.validate()
    kt = np.asarray(params.translational_stiffness)
    if np.any(kt > STIFFNESS_MAX):
        raise ValueError(f"translational_stiffness: crisp_controllers accepts at most {STIFFNESS_MAX} N/m, got {kt.tolist()}")
    dt = params.translational_damping
    dr = params.rotational_damping
    out: dict[str, float] = {}
    for i, axis in enumerate(AXES):
        out[f"task.k_pos_{axis}"] = float(kt[i])
        out[f"task.k_rot_{axis}"] = float(params.rotational_stiffness[i])
        out[f"task.d_pos_{axis}"] = -1.0 if dt is None else float(dt[i])
        out[f"task.d_rot_{axis}"] = -1.0 if dr is None else float(dr[i])
        out[f"task.error_clip.{axis}"] = float(params.translational_clip[i])
        out[f"task.error_clip.r{axis}"] = float(params.rotational_clip[i])
    out["nullspace.stiffness"] = float(params.nullspace_stiffness)
    out["max_delta_tau"] = float(params.torque_rate_limit)
    return out


def parameters_to_impedance(values: Mapping[str, object]) -> ImpedanceParams:
    """The ``ImpedanceParams`` a crisp controller with these parameter values runs (defaults fill gaps)."""
    v = {**DEFAULTS, **values}

    def triple(fmt: str) -> tuple[float, float, float]:
        return tuple(float(v[fmt.format(a)]) for a in AXES)

    def damping(fmt: str):
        d = triple(fmt)
        return None if all(x < 0 for x in d) else tuple(max(x, 0.0) for x in d)

    return ImpedanceParams(
        translational_stiffness=triple("task.k_pos_{}"),
        rotational_stiffness=triple("task.k_rot_{}"),
        translational_damping=damping("task.d_pos_{}"),
        rotational_damping=damping("task.d_rot_{}"),
        translational_clip=triple("task.error_clip.{}"),
        rotational_clip=triple("task.error_clip.r{}"),
        nullspace_stiffness=min(float(v["nullspace.stiffness"]), 100.0),
        torque_rate_limit=float(v["max_delta_tau"]),
    )
