"""Request bodies of the robot server, generated from ``robot_servers.limits``.

The schemas refuse what JSON can say wrong (types, lengths, ranges) with a 422 naming the field; the
guard then checks the same limits again, so a command sent in-process is judged identically.
"""

from __future__ import annotations

from typing import Annotated, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model

from robot_servers.backends.base import ImpedanceParams
from robot_servers.limits import (
    IMPEDANCE_LIMITS,
    JOINT_RANGE,
    JOINT_RESET_DURATION,
    MAX_ADVANCE_S,
    MAX_GRIPPER_WIDTH,
    POSITIVE_IMPEDANCE,
)

Finite = Annotated[float, Field(allow_inf_nan=False)]
Width = Annotated[float, Field(ge=0.0, le=MAX_GRIPPER_WIDTH, allow_inf_nan=False, description="m, 0 closed .. 0.08 open")]
Pose7 = Annotated[list[Finite], Field(min_length=7, max_length=7, description="x, y, z (m), qx, qy, qz, qw; base frame")]
Joints7 = Annotated[list[Annotated[float, Field(ge=JOINT_RANGE[0], le=JOINT_RANGE[1], allow_inf_nan=False)]],
                    Field(min_length=7, max_length=7, description="joint positions, rad")]
Seconds = Annotated[float, Field(gt=0.0, le=MAX_ADVANCE_S, allow_inf_nan=False)]


class StrictBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TargetBody(StrictBody):
    pose: Pose7
    gripper: Optional[Width] = None


class PairTargetBody(StrictBody):
    targets: dict[str, TargetBody] = Field(description="each arm's target, by the arm names /health's pair gives")


class GripperBody(StrictBody):
    width: Width


def _impedance_field(name: str, low: float, high: float, unit: str, size: int):
    positive = name in POSITIVE_IMPEDANCE  # commanded damping must be above zero, not at it
    number = Annotated[float, Field(**{"gt" if positive else "ge": low}, le=high, allow_inf_nan=False)]
    if size == 1:
        kind = number
    else:
        kind = Annotated[list[number], Field(min_length=size, max_length=size,
                                             description=f"{unit}, each in {'(' if positive else '['}{low}, {high}]")]
    default = getattr(ImpedanceParams(), name)
    if default is None:
        return Optional[kind], None
    return kind, default if size == 1 else list(default)


ImpedanceBody = create_model(
    "ImpedanceBody", __base__=StrictBody,
    __doc__="Full set of impedance parameters (omitted fields take the defaults of ``ImpedanceParams``).",
    **{name: _impedance_field(name, *limits) for name, limits in IMPEDANCE_LIMITS.items()},
)


class JointResetBody(StrictBody):
    q: Optional[Joints7] = None  # None: the backend's home configuration
    duration: Annotated[float, Field(gt=JOINT_RESET_DURATION[0], le=JOINT_RESET_DURATION[1], allow_inf_nan=False)] = 3.0


class SafetyStopBody(StrictBody):
    reason: Annotated[str, Field(min_length=1, max_length=200)] = "stop requested"


class AdvanceBody(StrictBody):
    seconds: Seconds


class ResetRobotBody(StrictBody):
    q: Optional[Joints7] = None  # None: the backend's home configuration


class ResetSceneBody(StrictBody):
    seed: Optional[Annotated[int, Field(ge=0, le=2**32 - 1)]] = None


class StepBody(StrictBody):
    """Target (optional), simulated time to advance (lockstep backends only), then observe — one round trip."""

    pose: Optional[Pose7] = None
    gripper: Optional[Width] = None
    advance: Optional[Seconds] = None
    wait: Optional[Annotated[float, Field(ge=0.0, le=MAX_ADVANCE_S, allow_inf_nan=False)]] = Field(
        None, description="real-time backends: seconds after the command to observe (the env's time to its tick)")
    images: bool = True
    scene: bool = False  # include the ground-truth scene (twin) observed at the same instant
