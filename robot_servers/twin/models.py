"""MJCF of the twin, generated from readable parameter tables.

Kinematics: Franka's published joint origins (the same DH chain for Panda and FR3; flange 0.107 m
after joint 7, hand turned −45° about z, TCP 0.1034 m from the flange between the fingertips).
Inertias: Panda from the published identification (Gaz et al. 2019, as in MuJoCo Menagerie);
FR3 from Franka's FR3 description (as shipped in franky-sim's fr3.xml). Joint limits and torque
limits from Franka's datasheets. Geometry is primitives (capsules, boxes) so software rendering
is fast and contacts are cheap; the links' capsules follow the kinematic chain.

Gravity compensation: every robot body has ``gravcomp="1"`` — MuJoCo cancels their weight exactly,
as Franka's firmware does on the real arm; a grasped object's weight is not compensated (as on the
robot without ``set_load``).
"""

from __future__ import annotations

import dataclasses
import math

from robot_servers.franka import FLANGE_OFFSET, HAND_YAW, HOME_Q, JOINT_FRAMES, TCP_OFFSET

FINGER_ORIGIN = 0.0584  # m from the flange-side of the hand to the finger joints
HAND_QUAT = f"{math.cos(HAND_YAW / 2):.7f} 0 0 {math.sin(HAND_YAW / 2):.7f}"  # about the flange z axis (wxyz)


@dataclasses.dataclass(frozen=True)
class ArmLink:
    """One moving link: frame offset from its parent (pos, MuJoCo wxyz quat), inertial and joint."""

    pos: str
    quat: str
    mass: float
    com: str
    inertia: str  # "fullinertia=..." or "diaginertia=... quat=..." attribute text
    joint_range: tuple[float, float]
    torque_limit: float
    armature: float
    damping: float


# Capsules along the chain, in each link's frame (shared by Panda and FR3: same kinematics).
LINK_CAPSULES = {
    "link0": [("0 0 0.02 0 0 0.2", 0.07)],
    "link1": [("0 0 -0.2 0 0 -0.06", 0.06), ("0 0 -0.06 0 0 0.05", 0.06)],
    "link2": [("0 0 -0.06 0 0 0.06", 0.06), ("0 0 0 0 -0.18 0", 0.06)],
    "link3": [("0 0 -0.15 0 0 -0.06", 0.06), ("0.0825 0 -0.06 0.0825 0 0.05", 0.055)],
    "link4": [("0 0 -0.05 0 0 0.05", 0.055), ("-0.0825 0.03 0 -0.0825 0.12 0", 0.055)],
    "link5": [("0 0 -0.25 0 0 -0.12", 0.05), ("0 0.08 -0.12 0 0.08 -0.02", 0.035), ("0 0 -0.04 0 0 0.04", 0.06)],
    "link6": [("0 0 -0.03 0 0 0.01", 0.05), ("0 0 0 0.088 0 0", 0.045)],
    "link7": [("0 0 -0.01 0 0 0.08", 0.045)],
}

# (pos, quat) of link1..link7 in their parent's frame
_CHAIN = tuple((" ".join(f"{v:g}" for v in pos), " ".join(f"{v:g}" for v in quat)) for pos, quat in JOINT_FRAMES)

_PANDA_INERTIA = (
    (4.970684, "0.003875 0.002081 -0.04762", 'fullinertia="0.70337 0.70661 0.009117 -0.000139 0.006772 0.019169"'),
    (0.646926, "-0.003141 -0.02872 0.003495", 'fullinertia="0.007962 0.02811 0.025995 -0.003925 0.010254 0.000704"'),
    (3.228604, "0.027518 0.039252 -0.066502", 'fullinertia="0.037242 0.036155 0.01083 -0.004761 -0.011396 -0.012805"'),
    (3.587895, "-0.05317 0.104419 0.027454", 'fullinertia="0.025853 0.019552 0.028323 0.007796 -0.001332 0.008641"'),
    (1.225946, "-0.011953 0.041065 -0.038437", 'fullinertia="0.035549 0.029474 0.008627 -0.002117 -0.004037 0.000229"'),
    (1.666555, "0.060149 -0.014117 -0.010517", 'fullinertia="0.001964 0.004354 0.005433 0.000109 -0.001158 0.000341"'),
    (0.735522, "0.010517 -0.004252 0.061597", 'fullinertia="0.012516 0.010027 0.004815 -0.000428 -0.001196 -0.000741"'),
)
_PANDA_RANGES = ((-2.8973, 2.8973), (-1.7628, 1.7628), (-2.8973, 2.8973), (-3.0718, -0.0698),
                 (-2.8973, 2.8973), (-0.0175, 3.7525), (-2.8973, 2.8973))

_FR3_INERTIA = (
    (2.92747, "4.128e-07 -0.0181251 -0.0386036", 'quat="0.998098 -0.0605364 0.00380499 0.0110109" diaginertia="0.0239286 0.0227246 0.00610634"'),
    (2.93554, "0.00318289 -0.0743222 0.00881461", 'quat="0.502599 0.584437 -0.465998 0.434366" diaginertia="0.0629567 0.0411924 0.0246371"'),
    (2.2449, "0.0407016 -0.00482006 -0.0289731", 'quat="0.921025 -0.244161 0.155272 0.260745" diaginertia="0.0267409 0.0189869 0.0171587"'),
    (2.6156, "-0.0459101 0.0630493 -0.00851879", 'quat="0.438018 0.803311 0.00937812 0.403414" diaginertia="0.05139 0.0372717 0.0160047"'),
    (2.32712, "-0.00160396 0.0292536 -0.0972966", 'quat="0.919031 0.125604 0.0751531 -0.366003" diaginertia="0.0579335 0.0449144 0.0130634"'),
    (1.81704, "0.0597131 -0.0410295 -0.0101693", 'quat="0.621301 0.552665 0.510011 0.220081" diaginertia="0.0175039 0.0161123 0.00193529"'),
    (0.627143, "0.00452258 0.00862619 -0.0161633", 'quat="0.727579 0.0978688 -0.24906 0.63168" diaginertia="0.000223836 0.000223642 5.64132e-07"'),
)
_FR3_RANGES = ((-2.7437, 2.7437), (-1.7837, 1.7837), (-2.9007, 2.9007), (-3.0421, -0.1518),
               (-2.8065, 2.8065), (0.5445, 4.5169), (-3.0159, 3.0159))
_TORQUE_LIMITS = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)


def _links(inertia, ranges, armature, damping) -> tuple[ArmLink, ...]:
    return tuple(
        ArmLink(pos, quat, mass, com, inert, rng, tau, arm, damp)
        for (pos, quat), (mass, com, inert), rng, tau, arm, damp in zip(
            _CHAIN, inertia, ranges, _TORQUE_LIMITS, armature, damping)
    )


ROBOTS: dict[str, tuple[ArmLink, ...]] = {
    # Panda: Menagerie's armature 0.1 and damping 1 (reflected rotor inertia, viscous friction).
    "panda": _links(_PANDA_INERTIA, _PANDA_RANGES, (0.1,) * 7, (1.0,) * 7),
    # FR3: franky-sim's armature and damping (its Coulomb friction is left out: see module doc).
    "fr3": _links(_FR3_INERTIA, _FR3_RANGES, (0.195,) * 4 + (0.074,) * 3, (0.21,) * 7),
}

# Franka's default home (TCP at 0.307, 0, 0.487 pointing down) lies inside both robots' limits (FR3 q6 ≥ 0.5445).
HOME = {"panda": HOME_Q, "fr3": HOME_Q}

HAND_MASS = 0.73
FINGER_MASS = 0.015
GRIPPER_FORCE = 70.0  # N per finger, Franka hand continuous grasp force
GRIPPER_SPEED = 0.1  # m/s of width (0.05 m/s per finger), Franka hand spec

CUBE_HALF = 0.02  # m
PEG_HALF = 0.011  # m, square peg cross-section half width
PEG_HALF_LENGTH = 0.045
HOLE_CLEARANCE = 0.0015  # m per side (3 mm total)
HOLE_DEPTH = 0.04
TABLE_TOP = 0.0  # the robot stands on the table surface
# Relocation: the cube is carried between two marked table regions (xy centres, base frame).
RELOCATE_REGIONS = {"A": (0.5, -0.06), "B": (0.5, 0.06)}
REGION_RADIUS = 0.04  # m
REGION_COLORS = {"A": "0.15 0.45 0.9 1", "B": "0.95 0.75 0.1 1"}


def _link_xml(name: str, link: ArmLink, inner: str, prefix: str = "") -> str:
    capsules = "\n".join(
        f'<geom class="{prefix}robot" type="capsule" fromto="{ft}" size="{r}"/>' for ft, r in LINK_CAPSULES[name]
    )
    lo, hi = link.joint_range
    return f"""
<body name="{prefix}{name}" pos="{link.pos}" quat="{link.quat}" gravcomp="1">
  <inertial mass="{link.mass}" pos="{link.com}" {link.inertia}/>
  <joint name="{prefix}joint{name[-1]}" axis="0 0 1" range="{lo} {hi}" armature="{link.armature}" damping="{link.damping}"/>
  {capsules}
  {inner}
</body>"""


def _hand_xml(prefix: str = "") -> str:
    finger_geom = (
        f'type="box" size="0.009 0.005 0.027" pos="0 0.005 0.027" class="{prefix}finger_pad"'
    )
    return f"""
<body name="{prefix}hand" pos="0 0 {FLANGE_OFFSET}" quat="{HAND_QUAT}" gravcomp="1">
  <inertial mass="{HAND_MASS}" pos="-0.01 0 0.03" diaginertia="0.001 0.0025 0.0017"/>
  <geom name="{prefix}hand" class="{prefix}robot" type="box" size="0.02 0.1 0.025" pos="0 0 0.03" material="hand"/>
  <geom class="{prefix}robot" type="cylinder" size="0.035 0.006" pos="0 0 0.004" material="dark"/>
  <site name="{prefix}tcp" pos="0 0 {TCP_OFFSET}" size="0.004" rgba="1 0 0 0.5" group="4"/>
  {WRIST_CAMERA.format(prefix=prefix)}
  <body name="{prefix}left_finger" pos="0 0 {FINGER_ORIGIN}" gravcomp="1">
    <inertial mass="{FINGER_MASS}" pos="0 0.005 0.027" diaginertia="2.375e-6 2.375e-6 7.5e-7"/>
    <joint name="{prefix}finger_joint1" type="slide" axis="0 1 0" range="0 0.04" armature="0.002" damping="2"/>
    <geom name="{prefix}left_pad" {finger_geom}/>
  </body>
  <body name="{prefix}right_finger" pos="0 0 {FINGER_ORIGIN}" quat="0 0 0 1" gravcomp="1">
    <inertial mass="{FINGER_MASS}" pos="0 0.005 0.027" diaginertia="2.375e-6 2.375e-6 7.5e-7"/>
    <joint name="{prefix}finger_joint2" type="slide" axis="0 1 0" range="0 0.04" armature="0.002" damping="2"/>
    <geom name="{prefix}right_pad" {finger_geom}/>
  </body>
</body>"""


def _scene_xml(scene: str) -> str:
    if scene == "empty":
        return ""
    if scene == "pick_cube":
        return f"""
<body name="cube" pos="0.5 0 {TABLE_TOP + CUBE_HALF}">
  <freejoint name="cube"/>
  <geom name="cube" class="object" type="box" size="{CUBE_HALF} {CUBE_HALF} {CUBE_HALF}" mass="0.05" material="cube"/>
</body>"""
    if scene == "relocate":
        # flat discs 1 mm proud of the table (visual only) so both cameras see them; the cube starts on A
        discs = "\n".join(
            f'<geom name="region_{name}" type="cylinder" size="{REGION_RADIUS} 0.0005" '
            f'pos="{x} {y} {TABLE_TOP + 0.0005}" rgba="{REGION_COLORS[name]}" contype="0" conaffinity="0"/>'
            for name, (x, y) in RELOCATE_REGIONS.items()
        )
        x, y = RELOCATE_REGIONS["A"]
        return f"""
{discs}
<body name="cube" pos="{x} {y} {TABLE_TOP + CUBE_HALF}">
  <freejoint name="cube"/>
  <geom name="cube" class="object" type="box" size="{CUBE_HALF} {CUBE_HALF} {CUBE_HALF}" mass="0.05" material="cube"/>
</body>"""
    if scene == "peg_insertion":
        inner = PEG_HALF + HOLE_CLEARANCE
        wall = 0.03
        half_depth = HOLE_DEPTH / 2
        offset = inner + wall / 2
        side = inner + wall
        walls = "\n".join([
            f'<geom class="fixture" type="box" size="{wall / 2} {side} {half_depth}" pos="{offset} 0 {half_depth}"/>',
            f'<geom class="fixture" type="box" size="{wall / 2} {side} {half_depth}" pos="{-offset} 0 {half_depth}"/>',
            f'<geom class="fixture" type="box" size="{inner} {wall / 2} {half_depth}" pos="0 {offset} {half_depth}"/>',
            f'<geom class="fixture" type="box" size="{inner} {wall / 2} {half_depth}" pos="0 {-offset} {half_depth}"/>',
        ])
        return f"""
<body name="hole" pos="0.55 0 {TABLE_TOP}" mocap="true">
  {walls}
  <site name="hole_bottom" pos="0 0 0" size="0.003" group="4"/>
</body>
<body name="peg" pos="0.45 0 {TABLE_TOP + PEG_HALF_LENGTH}">
  <freejoint name="peg"/>
  <geom name="peg" class="object" type="box" size="{PEG_HALF} {PEG_HALF} {PEG_HALF_LENGTH}" mass="0.05" material="peg"/>
</body>"""
    if scene == "handover":
        hx, hy, hz = BAR_HALF
        return f"""
<body name="bar" pos="{BAR_START[0]} {BAR_START[1]} {TABLE_TOP + hz}">
  <freejoint name="bar"/>
  <geom name="bar" class="object" type="box" size="{hx} {hy} {hz}" mass="0.08" material="cube"/>
</body>
<site name="handover_goal" pos="{HANDOVER_GOAL[0]} {HANDOVER_GOAL[1]} {HANDOVER_GOAL[2]}" size="0.01" rgba="0.2 0.8 0.2 0.4" group="4"/>"""
    raise ValueError(f"scene: unknown scene {scene!r}; choose one of {SCENES}")


BIMANUAL_SCENES = ("handover",)
SCENES = ("empty", "pick_cube", "peg_insertion", "relocate", *BIMANUAL_SCENES)
# Handover (two arms facing each other along x, world frame midway between the bases): a bar lies along x on the
# left arm's side (y < 0); each hand takes the end nearer its own base, so the wrists stay on the outside
# (hands 12 cm apart: 3 cm of air between the 9 cm wide wrists above them).
BAR_HALF = (0.1, 0.0125, 0.0125)  # m: 20 cm long, 2.5 cm square
BAR_START = (0.0, -0.15)  # xy of the bar's centre before noise
HANDOVER_GOAL = (0.0, 0.15, 0.15)  # where the right hand brings the bar's centre

# Wrist: beside the hand, looking past the fingertips (as a wrist-mounted RealSense D405).
WRIST_CAMERA = '<camera name="{prefix}wrist" pos="-0.07 0 0.06" xyaxes="0 -1 0 -0.753 0 0.659" fovy="70"/>'
# Two arms: further back and higher, both arms' workspaces in view; facing arms are seen from the side.
SIDE_BY_SIDE_FRONT_CAMERA = '<camera name="front" pos="1.6 0 0.8" xyaxes="0 1 0 -0.4 0 0.9" fovy="55"/>'
FACING_FRONT_CAMERA = '<camera name="front" pos="0 -1.4 0.8" xyaxes="1 0 0 0 0.4 0.9" fovy="55"/>'
# Front: facing the robot across the table, aimed at (0.45, 0, 0.25): table and the hand at home in view.
FRONT_CAMERA = '<camera name="front" pos="1.35 0 0.55" xyaxes="0 1 0 -0.3 0 0.9" fovy="50"/>'


@dataclasses.dataclass(frozen=True)
class ArmMount:
    """Where one arm stands in the world: its names' prefix, its base position on the table and its yaw."""

    prefix: str = ""
    pos: tuple[float, float, float] = (0.0, 0.0, 0.0)
    yaw: float = 0.0

    @property
    def quat_xyzw(self) -> tuple[float, float, float, float]:
        return (0.0, 0.0, math.sin(self.yaw / 2), math.cos(self.yaw / 2))


SINGLE_ARM = (ArmMount(),)
LAYOUTS = ("side_by_side", "facing")
BIMANUAL_SEPARATION = 1.0  # m between the two bases


def bimanual_mounts(layout: str = "side_by_side", separation: float = BIMANUAL_SEPARATION) -> tuple[ArmMount, ArmMount]:
    """The left and right arms' mounts, the world origin midway between their bases.

    ``side_by_side``: both face +x, the left arm at +y (as HIL-SERL's two-Franka cell); ``facing``: across the
    table from each other along x, the left arm at −x facing +x.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout: unknown layout {layout!r}; choose one of {LAYOUTS}")
    if not 0.3 <= separation <= 1.6:
        raise ValueError(f"separation: expected 0.3..1.6 m between the bases, got {separation}")
    half = separation / 2
    if layout == "side_by_side":
        return ArmMount("left/", (0.0, half, 0.0)), ArmMount("right/", (0.0, -half, 0.0))
    return ArmMount("left/", (-half, 0.0, 0.0)), ArmMount("right/", (half, 0.0, 0.0), math.pi)


def _arm_xml(links: tuple[ArmLink, ...], mount: ArmMount) -> str:
    body = _hand_xml(mount.prefix)
    for index in range(7, 0, -1):
        body = _link_xml(f"link{index}", links[index - 1], body, mount.prefix)
    capsules0 = "\n".join(f'<geom class="{mount.prefix}robot" type="capsule" fromto="{ft}" size="{r}"/>'
                          for ft, r in LINK_CAPSULES["link0"])
    x, y, z = mount.pos
    return f"""
    <body name="{mount.prefix}link0" pos="{x} {y} {z}" euler="0 0 {mount.yaw}">
      <inertial mass="0.629769" pos="-0.041018 -0.00014 0.049974" diaginertia="0.00315 0.00388 0.004285"/>
      {capsules0}
      {body}
    </body>"""


def _arm_parts(links: tuple[ArmLink, ...], mount: ArmMount) -> tuple[str, str, str, str]:
    """(contact excludes, tendon, equality, actuators) of one arm."""
    p = mount.prefix
    contact = f'<exclude body1="{p}link0" body2="{p}link1"/>\n    <exclude body1="{p}hand" body2="{p}link7"/>'
    tendon = (f'<fixed name="{p}split"><joint joint="{p}finger_joint1" coef="0.5"/>'
              f'<joint joint="{p}finger_joint2" coef="0.5"/></fixed>')
    equality = (f'<joint joint1="{p}finger_joint1" joint2="{p}finger_joint2" solimp="0.95 0.99 0.001" '
                'solref="0.005 1"/>')
    motors = "\n    ".join(
        f'<motor name="{p}motor{i + 1}" joint="{p}joint{i + 1}" ctrlrange="{-link.torque_limit} {link.torque_limit}"/>'
        for i, link in enumerate(links)
    )
    # Gripper: position servo on the mean finger opening (half the width), force-limited.
    kp, kv = 5000.0, 40.0
    gripper = (f'<general name="{p}gripper" tendon="{p}split" ctrlrange="0 0.04" gainprm="{kp}" biastype="affine" '
               f'biasprm="0 {-kp} {-kv}" forcerange="{-2 * GRIPPER_FORCE} {2 * GRIPPER_FORCE}"/>')
    return contact, tendon, equality, f"{motors}\n    {gripper}"


def _arm_classes(mounts: tuple[ArmMount, ...]) -> str:
    """Each arm's geom classes. One arm never collides with itself (its capsules overlap at the joints); two arms
    collide with each other: arm k has contype bit k+1 and, with another arm, that arm's bit as conaffinity."""
    classes = []
    for k, mount in enumerate(mounts):
        contype = 2 << k
        conaffinity = sum(2 << j for j in range(len(mounts)) if j != k)
        classes.append(f"""
    <default class="{mount.prefix}robot">
      <geom contype="{contype}" conaffinity="{conaffinity}" material="arm" density="0"/>
    </default>
    <default class="{mount.prefix}finger_pad">
      <geom contype="{contype}" conaffinity="{conaffinity}" material="dark" friction="1.5 0.01 0.001" condim="4" density="0"/>
    </default>""")
    return "".join(classes)


def build_mjcf(robot: str = "panda", scene: str = "pick_cube", timestep: float = 0.001,
               offscreen_size: tuple[int, int] = (640, 480), mounts: tuple[ArmMount, ...] = SINGLE_ARM) -> str:
    """The full MJCF string: arms + hands + table + scene objects + cameras + actuators (arm after arm)."""
    if robot not in ROBOTS:
        raise ValueError(f"robot: unknown robot {robot!r}; choose one of {sorted(ROBOTS)}")
    if scene in BIMANUAL_SCENES and len(mounts) != 2:
        raise ValueError(f"scene: {scene!r} needs two arms (bimanual_twin)")
    links = ROBOTS[robot]
    parts = [_arm_parts(links, mount) for mount in mounts]
    contacts, tendons, equalities, actuators = ("\n    ".join(column) for column in zip(*parts))
    arms = "".join(_arm_xml(links, mount) for mount in mounts)
    everything = sum(2 << k for k in range(len(mounts))) | 1  # objects and the table touch every arm
    if len(mounts) == 1:
        table_x, table_half, front = 0.45, 0.6, FRONT_CAMERA
    elif all(mount.yaw == 0.0 for mount in mounts):  # side by side
        table_x, table_half, front = 0.35, 0.75, SIDE_BY_SIDE_FRONT_CAMERA
    else:
        table_x, table_half, front = 0.0, 0.8, FACING_FRONT_CAMERA
    # A bar held by one end pivots about the finger axis, against friction alone: harder friction cones (MuJoCo's
    # advice for grasping) keep it from creeping round in the hand.
    grip = ' impratio="10"' if scene in BIMANUAL_SCENES else ""
    return f"""
<mujoco model="{robot}_{scene}">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{timestep}" integrator="implicitfast" iterations="20" ls_iterations="8"{grip}/>
  <visual>
    <quality shadowsize="0" offsamples="0"/>
    <global offwidth="{offscreen_size[0]}" offheight="{offscreen_size[1]}"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.5 0.5 0.5" specular="0 0 0"/>
  </visual>
  <default>
    <geom solref="0.005 1"/>
    <joint solreflimit="0.004 1"/>  <!-- stiff end stops: < 2 mrad overshoot at full joint torque -->
    {_arm_classes(mounts)}
    <default class="object">
      <geom contype="1" conaffinity="{everything}" friction="1 0.01 0.001" condim="4"/>
    </default>
    <default class="fixture">
      <geom contype="1" conaffinity="{everything}" material="fixture" friction="0.3 0.005 0.0001"/>
    </default>
  </default>
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1="0.55 0.45 0.35" rgb2="0.5 0.4 0.3" width="64" height="64"/>
    <material name="table" texture="grid" texrepeat="8 8"/>
    <material name="arm" rgba="0.92 0.92 0.92 1"/>
    <material name="hand" rgba="0.85 0.85 0.88 1"/>
    <material name="dark" rgba="0.2 0.2 0.2 1"/>
    <material name="cube" rgba="0.85 0.15 0.1 1"/>
    <material name="peg" rgba="0.1 0.35 0.85 1"/>
    <material name="fixture" rgba="0.2 0.65 0.25 1"/>
  </asset>
  <worldbody>
    <light name="top" pos="0.4 0 1.5" dir="0 0 -1" directional="true" castshadow="false" diffuse="0.5 0.5 0.5"/>
    <geom name="floor" type="plane" size="3 3 0.1" pos="0 0 -0.75" rgba="0.45 0.45 0.47 1" contype="0" conaffinity="0"/>
    <geom name="table" type="box" size="{table_half} {table_half} 0.02" pos="{table_x} 0 {TABLE_TOP - 0.02}" material="table" contype="1" conaffinity="{everything}"/>
    {front}
    {arms}
    {_scene_xml(scene)}
  </worldbody>
  <contact>
    {contacts}
  </contact>
  <tendon>
    {tendons}
  </tendon>
  <equality>
    {equalities}
  </equality>
  <actuator>
    {actuators}
  </actuator>
</mujoco>
"""
