"""Every limit a robot command is checked against, in one table, and the checks that use it.

The guard validates commands with these functions; the HTTP request schemas are generated from the
same numbers, so the in-process path and the server refuse exactly the same input. Each check raises
``ValueError`` whose message starts with the field name ("pose: ...").
"""

from __future__ import annotations

import numpy as np

from robot_servers.control.pose import normalize_quat

MAX_GRIPPER_WIDTH = 0.08  # m, Franka hand fully open
QUAT_NORM_TOLERANCE = 0.1  # |‖q‖ − 1| up to this is normalised, beyond it refused
JOINT_RANGE = (-2 * np.pi, 2 * np.pi)  # rad; a backend narrows this to its arm's joint limits
JOINT_RESET_DURATION = (0.0, 30.0)  # s, a blocking joint move (exclusive of 0)
MAX_ADVANCE_S = 10.0  # s of simulated time per request
MAX_LOAD_KG = 3.0  # Franka's rated payload
MAX_BODY_BYTES = 1 << 20  # an HTTP request body; commands are a few hundred bytes

# Run-time impedance changes (SERL's dynamic_reconfigure ranges): field -> (low, high, unit, size).
# Size 3 is one value per axis; 1 is a scalar.
IMPEDANCE_LIMITS: dict[str, tuple[float, float, str, int]] = {
    "translational_stiffness": (0.0, 6000.0, "N/m", 3),
    "rotational_stiffness": (0.0, 300.0, "Nm/rad", 3),
    "translational_damping": (0.0, 400.0, "Ns/m", 3),
    "rotational_damping": (0.0, 30.0, "Nms/rad", 3),
    "translational_clip": (1e-4, 1.0, "m", 3),
    "rotational_clip": (1e-4, float(np.pi), "rad", 3),
    # The lower error bound is −clip_neg (None: −clip, symmetric); positive magnitudes like the clips.
    "translational_clip_neg": (1e-4, 1.0, "m", 3),
    "rotational_clip_neg": (1e-4, float(np.pi), "rad", 3),
    # Integral gains act on SERL's running sum of the clipped error over 1 kHz ticks (0: no integral term).
    "translational_ki": (0.0, 100.0, "N/m per 1 ms tick", 3),
    "rotational_ki": (0.0, 100.0, "Nm/rad per 1 ms tick", 3),
    "nullspace_stiffness": (0.0, 100.0, "Nm/rad", 1),
    "joint1_nullspace_stiffness": (0.0, 200.0, "Nm/rad", 1),
    "torque_rate_limit": (1e-3, 10.0, "Nm per 1 ms tick", 1),
}
# Commanded damping must be above the table's 0: an undamped axis swings past its target (3 cm in the
# twin). Only commands are held to this; the controller itself still accepts zero for analysis.
POSITIVE_IMPEDANCE = ("translational_damping", "rotational_damping")


def validate_pose(pose, field: str = "pose") -> np.ndarray:
    """A (7,) finite pose (xyz + quat xyzw) with its near-unit quaternion normalised."""
    arr = np.asarray(pose, dtype=np.float64)
    if arr.shape != (7,):
        raise ValueError(f"{field}: expected 7 values (xyz + quat xyzw), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{field}: values must be finite, got {arr.tolist()}")
    with np.errstate(over="ignore"):
        norm = float(np.linalg.norm(arr[3:]))
    if not abs(norm - 1.0) <= QUAT_NORM_TOLERANCE:
        raise ValueError(f"{field}: quaternion (xyzw) norm is {norm:.4g}; send a unit quaternion")
    return np.concatenate([arr[:3], normalize_quat(arr[3:])])


def validate_gripper(width, field: str = "gripper") -> float:
    """A finite width in [0, MAX_GRIPPER_WIDTH] m."""
    try:
        value = float(width)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: expected a number in [0, {MAX_GRIPPER_WIDTH}] m, got {width!r}") from None
    if not np.isfinite(value) or not 0.0 <= value <= MAX_GRIPPER_WIDTH:
        raise ValueError(f"{field}: width must be finite and in [0, {MAX_GRIPPER_WIDTH}] m, got {value}")
    return value


def validate_joints(q, field: str = "q", low=JOINT_RANGE[0], high=JOINT_RANGE[1]) -> np.ndarray:
    """(7,) finite joint positions inside [low, high] (scalars or per-joint arrays)."""
    arr = np.asarray(q, dtype=np.float64)
    if arr.shape != (7,):
        raise ValueError(f"{field}: expected 7 joint positions, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{field}: values must be finite, got {arr.tolist()}")
    low, high = np.broadcast_to(low, 7), np.broadcast_to(high, 7)
    outside = (arr < low) | (arr > high)
    if np.any(outside):
        bad = int(np.argmax(outside))
        raise ValueError(f"{field}: joint {bad + 1} = {arr[bad]:.4f} rad outside [{low[bad]:.4f}, {high[bad]:.4f}]")
    return arr


def validate_seconds(value, field: str, low: float, high: float, low_inclusive: bool = False) -> float:
    """A finite duration in (low, high] (or [low, high])."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: expected seconds, got {value!r}") from None
    above = seconds >= low if low_inclusive else seconds > low
    if not (np.isfinite(seconds) and above and seconds <= high):
        bracket = "[" if low_inclusive else "("
        raise ValueError(f"{field}: must be in {bracket}{low}, {high}] s, got {seconds}")
    return seconds


def validate_scalar(value, field: str, low: float, high: float, unit: str = "") -> float:
    """A finite number in [low, high]."""
    unit = f" {unit}" if unit else ""
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a number in [{low}, {high}]{unit}, got {value!r}")
    try:
        scalar = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: expected a number in [{low}, {high}]{unit}, got {value!r}") from None
    if not np.isfinite(scalar) or not low <= scalar <= high:
        raise ValueError(f"{field}: must be finite and in [{low}, {high}]{unit}, got {scalar}")
    return scalar


def validate_load(mass, center, inertia) -> tuple[float, np.ndarray, np.ndarray]:
    """A payload: mass (kg), centre of mass (3, m from the flange), inertia (3×3 kg·m²), all finite."""
    mass = validate_scalar(mass, "mass", 0.0, MAX_LOAD_KG, "kg")
    arrays = []
    for field, value, shape in (("center", center, (3,)), ("inertia", inertia, (3, 3))):
        try:
            arr = np.asarray(value, dtype=np.float64).reshape(shape)
        except (TypeError, ValueError):
            raise ValueError(f"{field}: expected {int(np.prod(shape))} numbers, got {value!r}") from None
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{field}: values must be finite, got {arr.tolist()}")
        arrays.append(arr)
    return mass, arrays[0], arrays[1]


def validate_impedance_field(name: str, value) -> np.ndarray | float:
    """One impedance field checked against ``IMPEDANCE_LIMITS`` (an array of 3, or a float)."""
    low, high, unit, size = IMPEDANCE_LIMITS[name]
    if size == 1:
        return validate_scalar(value, name, low, high, unit)
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (size,):
        raise ValueError(f"{name}: expected {size} values, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: values must be finite, got {arr.tolist()}")
    if np.any(arr < low) or np.any(arr > high):
        raise ValueError(f"{name}: values must lie in [{low}, {high}] {unit}, got {arr.tolist()}")
    return arr


def validate_commanded_impedance(name: str, value) -> None:
    """What a command may not set although the controller could run it: zero or negative damping."""
    if name in POSITIVE_IMPEDANCE and value is not None and np.any(np.asarray(value, dtype=np.float64) <= 0.0):
        unit = IMPEDANCE_LIMITS[name][2]
        raise ValueError(f"{name}: damping must be > 0 {unit} (an undamped axis overshoots its target), "
                         f"got {np.asarray(value, dtype=np.float64).tolist()}")
