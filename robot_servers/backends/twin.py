"""``TwinBackend``: the MuJoCo Franka twin behind the ``Backend`` interface.

Physics at ``physics_hz`` (1 kHz) with SERL's Cartesian impedance law evaluated every tick
(``robot_servers.control.impedance``); gravity is compensated by MuJoCo's ``gravcomp`` as the
arm's firmware does. Two clocks:

- ``lockstep=True`` (training, tests): physics advances only inside ``advance(seconds)``, as fast
  as the CPU allows; identical seeds and command sequences give identical runs.
- ``lockstep=False`` (robot server): a background thread steps physics paced to the wall clock.

Scenes: ``empty``; ``pick_cube`` (``reset_scene`` puts the cube at a random table position and
yaw); ``relocate`` (the same cube and two marked regions A and B; ``reset_scene`` puts the cube in
region A, or ``region="B"``, at a random yaw); ``peg_insertion`` (``reset_scene`` puts the hole block at a random pose and the peg in the
closed hand at the current TCP, sticking 57 mm out of the fingertips — call it with the arm at its
reset pose). ``scene`` gives object poses (xyz + quat xyzw); the hole's pose is its bottom centre.

``state().wrench`` is the force/torque the environment exerts on the hand at the TCP (base frame),
estimated like Franka's from the joint-space constraint torques: pressing on the table reads +z,
a held object's weight −z. SERL's per-tick target low-pass is optional (``target_filter=0.005``; off
by default: targets apply at once and envs interpolate). Not modelled: joint friction.

Reflexes as the real arm's (``robot_servers.control.franka_limits``): measured joint or end-effector
speed over Franka's limits, or the law's torque changing faster than 1000 Nm/s, stops the arm where
it is (mode ``idle``, brakes on), names libfranka's error in ``state().errors`` and refuses targets
until ``recover()``. Joint resets are planned within the joint velocity/acceleration/jerk limits.
``python -m robot_servers.twin.snapshot --out DIR`` saves one PNG per camera.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Mapping

import numpy as np

from robot_servers.backends.base import ImpedanceParams, RobotState, SimulatedBackend
from robot_servers.control.franka_limits import limits_for, torque_rate_reflex, velocity_reflex
from robot_servers.control.impedance import RATE, ImpedanceController, filter_target, matrix_to_quat_xyzw
from robot_servers.control.joint_servo import JointMove
from robot_servers.control.pose import (compose_pose, euler_to_quat, quat_conjugate, quat_to_matrix, relative_pose,
                                        rotate, wxyz_to_xyzw, xyzw_to_wxyz)
from robot_servers.twin import fastloop, models
from robot_servers.twin.cameras import TwinCamera
from robot_servers.limits import MAX_GRIPPER_WIDTH, validate_gripper, validate_joints, validate_pose
from robot_servers.twin.rendering import make_renderer, mujoco, release_gl_context

CUBE_XY_CENTER = (0.5, 0.0)
CUBE_XY_RANGE = 0.1  # ± m
CUBE_YAW_RANGE = np.pi / 4
REGION_XY_NOISE = 0.01  # ± m around a relocation region's centre
HOLE_XY_CENTER = (0.55, 0.0)
HOLE_XY_RANGE = 0.04
HOLE_YAW_RANGE = 0.2
BAR_XY_RANGE = 0.03  # ± m around the handover bar's start
REALTIME_SLICE_TICKS = 10  # most physics ticks run per lock hold in real time (1 kHz: 10 ms of sim time)
PEG_TCP_OFFSET = 0.0116  # m along the TCP's z from the TCP to the peg centre (peg top just under the hand)
REFLEX_CHECK_TICKS = 10  # physics ticks between checks of the measured speeds (every tick for torque rate when needed)


@dataclasses.dataclass(frozen=True)
class TwinConfig:
    """Twin settings. ``crops`` maps camera name → (top, left, height, width) on a ``render_size`` frame."""

    robot: str = "panda"  # "panda" | "fr3"
    scene: str = "pick_cube"  # "empty" | "pick_cube" | "peg_insertion" | "relocate"
    cameras: tuple[str, ...] = ("wrist", "front")
    image_size: tuple[int, int] = (128, 128)  # (H, W) returned by the cameras
    render_size: tuple[int, int] | None = None  # (H, W) rendered before crop; None = image_size
    crops: Mapping[str, tuple[int, int, int, int]] = dataclasses.field(default_factory=dict)
    physics_hz: float = 1000.0
    lockstep: bool = True
    seed: int = 0
    impedance: ImpedanceParams = dataclasses.field(default_factory=ImpedanceParams)
    home_q: tuple[float, ...] | None = None  # None = Franka's default home
    target_filter: float | None = None  # SERL's per-tick target low-pass (0.005 there); None = targets apply at once
    visual: str = "primitives"  # "primitives" (fast) | "meshes" (FR3 visual meshes from franky-sim; slow to render)

    def __post_init__(self):
        if self.robot not in models.ROBOTS:
            raise ValueError(f"robot: unknown robot {self.robot!r}; choose one of {sorted(models.ROBOTS)}")
        if self.scene not in models.SCENES:
            raise ValueError(f"scene: unknown scene {self.scene!r}; choose one of {models.SCENES}")
        for name in self.cameras:
            if name not in ("wrist", "front"):
                raise ValueError(f"cameras: unknown camera {name!r}; the twin has 'wrist' and 'front'")
        for field in ("image_size", "render_size"):
            size = getattr(self, field)
            if size is not None and (len(size) != 2 or min(size) < 1 or max(size) > 4096):
                raise ValueError(f"{field}: expected (height, width) in 1..4096, got {size}")
        if self.visual not in ("primitives", "meshes"):
            raise ValueError(f"visual: expected 'primitives' or 'meshes', got {self.visual!r}")
        if self.target_filter is not None and not 0.0 < self.target_filter <= 1.0:
            raise ValueError(f"target_filter: must be in (0, 1] (SERL: 0.005) or None, got {self.target_filter}")
        if not 100.0 <= self.physics_hz <= 10000.0:
            raise ValueError(f"physics_hz: must be in [100, 10000], got {self.physics_hz}")
        for name in self.crops:
            if name not in self.cameras:
                raise ValueError(f"crops: camera {name!r} is not in cameras {self.cameras}")


class TwinWorld:
    """One MuJoCo world and its clock: model and data under one lock, the physics ticks of every arm in it (each
    arm's law evaluated every tick), the scene's objects and the renderers. Its arms are ``TwinBackend``s."""

    def __init__(self, config: TwinConfig, mounts: tuple[models.ArmMount, ...]):
        self.config = config
        self.lockstep = config.lockstep
        render_hw = config.render_size or config.image_size
        mjcf = models.build_mjcf(config.robot, config.scene, 1.0 / config.physics_hz,
                                 offscreen_size=(max(640, render_hw[1]), max(480, render_hw[0])), mounts=mounts)
        if config.visual == "meshes":
            from robot_servers.twin.meshes import add_mesh_visuals

            mjcf = add_mesh_visuals(mjcf)
        self.model = mujoco.MjModel.from_xml_string(mjcf)
        self.data = mujoco.MjData(self.model)
        self.dt = self.model.opt.timestep
        self.lock = threading.RLock()
        self._render_lock = threading.Lock()
        self.rng = np.random.default_rng(config.seed)
        self.mounts = mounts
        self.arms: list[TwinBackend] = []
        self._open_arms = 0
        self.fast = fastloop.runner()
        self._fast_args: tuple | None = None
        self.object_bodies = {
            name: self.model.body(name).id for name in ("cube", "peg", "hole", "bar")
            if mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, name) >= 0
        }
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False

    def attach(self, arm: "TwinBackend") -> None:
        self.arms.append(arm)
        self._open_arms += 1

    def start(self) -> None:
        """Scene at its seeded start, the compiled loop loaded, and (real time) the physics thread running."""
        if self.config.scene != "empty":
            self.reset_scene(self.config.seed)
        with self.lock:
            self._fast_args = self._stacked_arm_arrays()
            self.run_ticks(0)  # compiles the numba loop now (once per process), not in the first real-time tick
        if not self.lockstep:
            self.thread = threading.Thread(target=self._realtime_loop, name="twin-physics", daemon=True)
            self.thread.start()

    # ------------------------------------------------------------------ physics
    def _stacked_arm_arrays(self) -> tuple:
        """The compiled loop's per-arm arguments: tuples of views into MjData and into each arm's law."""
        arms = self.arms
        return (np.array([a._tcp for a in arms], dtype=np.int32),
                tuple(a._jacp for a in arms), tuple(a._jacr for a in arms),
                tuple(a._jacp_arm for a in arms), tuple(a._jacr_arm for a in arms),
                tuple(a._tcp_pos for a in arms), tuple(a._tcp_xmat for a in arms),
                tuple(a._q for a in arms), tuple(a._dq for a in arms), tuple(a._bias for a in arms),
                tuple(a._gravcomp for a in arms), tuple(a._ctrl for a in arms),
                tuple(a._target for a in arms), tuple(a._command for a in arms),
                np.array([a._filter_alpha for a in arms]),
                tuple(a.controller.gains for a in arms), tuple(a.controller.q_ns for a in arms),
                tuple(a.controller.tau for a in arms), tuple(a.controller.force for a in arms),
                tuple(a._gripper for a in arms), np.array([a._gripper_ctrl for a in arms], dtype=np.int64))

    def advance(self, seconds: float) -> None:
        """Lockstep: run physics (and every arm's law every tick) for ``seconds`` of sim time."""
        if not self.lockstep:
            raise RuntimeError("advance() is for lockstep twins; this one runs in real time")
        seconds = float(seconds)
        if not np.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds: must be finite and >= 0, got {seconds}")
        with self.lock:
            self.run_ticks(int(round(seconds / self.dt)))

    def run_ticks(self, n: int) -> None:
        arms = self.arms
        if all(arm._mode == "idle" for arm in arms):
            for _ in range(n):
                mujoco.mj_step(self.model, self.data)
                for arm in arms:
                    arm._apply_brakes()
            return
        if n == 0:
            self._run_ticks_unchecked(0)
        while n > 0 and not all(arm._mode == "idle" for arm in arms):
            # The law's rate limit keeps its torque stream continuous unless set above Franka's;
            # then every tick is judged, as the arm judges every command it receives.
            per_tick = any(arm._judges_every_tick() for arm in arms)
            ticks = 1 if per_tick else min(n, REFLEX_CHECK_TICKS)
            tau_before = [arm.controller.tau.copy() if per_tick else None for arm in arms]
            self._run_ticks_unchecked(ticks)
            n -= ticks
            self._check_health()
            for arm, before in zip(arms, tau_before):
                arm._check_reflexes(before)

    def _run_ticks_unchecked(self, n: int) -> None:
        data = self.data
        if self.fast is not None and all(arm._mode == "impedance" for arm in self.arms):
            (sites, jacp, jacr, jacp_arm, jacr_arm, tcp_pos, tcp_xmat, q, dq, bias, gravcomp, ctrl, target, command,
             alpha, gains, q_ns, tau, force, gripper, gripper_ctrl) = self._fast_args
            self.fast(n, self.model._address, data._address, sites, jacp, jacr, jacp_arm, jacr_arm, tcp_pos,
                      tcp_xmat, q, dq, bias, gravcomp, ctrl, data.ctrl, target, command, alpha, gains, q_ns, tau,
                      force, gripper, gripper_ctrl)
            return
        for _ in range(n):
            for arm in self.arms:
                filter_target(arm._target, arm._command, arm._filter_alpha)
            mujoco.mj_step1(self.model, data)
            for arm in self.arms:
                arm._apply_control()
            mujoco.mj_step2(self.model, data)
            for arm in self.arms:
                arm._apply_brakes()

    def _check_health(self) -> None:
        unstable = not np.all(np.isfinite(self.data.qpos))
        failed = [arm for arm in self.arms if arm._mode != "idle" and (unstable or np.max(np.abs(arm._dq)) > 20.0)]
        for arm in failed:
            arm._errors.append("simulation_unstable")
            arm._mode = "idle"
        if failed:
            self.data.qvel[:] = 0.0

    def _realtime_loop(self) -> None:
        start_wall = time.perf_counter()
        start_sim = self.data.time
        while not self._stop.is_set():
            with self.lock:
                behind = (time.perf_counter() - start_wall) - (self.data.time - start_sim)
            ticks = int(behind / self.dt)
            if ticks > 200:  # fell far behind (CPU starved): drop the backlog instead of racing
                start_wall += (ticks - 200) * self.dt
                ticks = 200
            while ticks > 0 and not self._stop.is_set():
                # Catch up in short slices so a request waits for the lock at most a few ticks.
                with self.lock:
                    self.run_ticks(min(ticks, REALTIME_SLICE_TICKS))
                ticks -= REALTIME_SLICE_TICKS
            time.sleep(0.001)

    # ------------------------------------------------------------------ scene (world frame)
    def scene(self) -> dict[str, np.ndarray]:
        with self.lock:
            mujoco.mj_kinematics(self.model, self.data)
            return {
                name: np.concatenate([self.data.xpos[body], wxyz_to_xyzw(self.data.xquat[body])])
                for name, body in self.object_bodies.items()
            }

    def reset_scene(self, seed: int | None = None, region: str = "A") -> None:
        rng = self.rng if seed is None else np.random.default_rng(seed)
        scene = self.config.scene
        if scene == "relocate" and region not in models.RELOCATE_REGIONS:
            raise ValueError(f"region: unknown region {region!r}; choose one of {sorted(models.RELOCATE_REGIONS)}")
        with self.lock:
            model, data = self.model, self.data
            if scene == "relocate":
                xy = np.asarray(models.RELOCATE_REGIONS[region]) + rng.uniform(-REGION_XY_NOISE, REGION_XY_NOISE, 2)
                yaw = rng.uniform(-CUBE_YAW_RANGE, CUBE_YAW_RANGE)
                self.set_free_body("cube", [*xy, models.TABLE_TOP + models.CUBE_HALF], euler_to_quat([0, 0, yaw]))
            elif "cube" in self.object_bodies:
                xy = np.asarray(CUBE_XY_CENTER) + rng.uniform(-CUBE_XY_RANGE, CUBE_XY_RANGE, 2)
                yaw = rng.uniform(-CUBE_YAW_RANGE, CUBE_YAW_RANGE)
                self.set_free_body("cube", [*xy, models.TABLE_TOP + models.CUBE_HALF], euler_to_quat([0, 0, yaw]))
            if "bar" in self.object_bodies:
                xy = np.asarray(models.BAR_START) + rng.uniform(-BAR_XY_RANGE, BAR_XY_RANGE, 2)
                self.set_free_body("bar", [*xy, models.TABLE_TOP + models.BAR_HALF[2]], [0.0, 0.0, 0.0, 1.0])
            if "hole" in self.object_bodies:
                xy = np.asarray(HOLE_XY_CENTER) + rng.uniform(-HOLE_XY_RANGE, HOLE_XY_RANGE, 2)
                yaw = rng.uniform(-HOLE_YAW_RANGE, HOLE_YAW_RANGE)
                mocap = model.body_mocapid[self.object_bodies["hole"]]
                data.mocap_pos[mocap] = [*xy, models.TABLE_TOP]
                data.mocap_quat[mocap] = xyzw_to_wxyz(euler_to_quat([0, 0, yaw]))
            if "peg" in self.object_bodies:
                self.arms[0]._hold_peg()
            mujoco.mj_forward(model, data)

    def set_free_body(self, name: str, position, quat_xyzw) -> None:
        joint = self.model.body_jntadr[self.object_bodies[name]]
        qadr = self.model.jnt_qposadr[joint]
        vadr = self.model.jnt_dofadr[joint]
        self.data.qpos[qadr:qadr + 3] = position
        self.data.qpos[qadr + 3:qadr + 7] = xyzw_to_wxyz(np.asarray(quat_xyzw, dtype=np.float64))
        self.data.qvel[vadr:vadr + 6] = 0.0

    def arm_contacts(self) -> int:
        """Contacts between two different arms right now (hands, fingers, links)."""
        with self.lock:
            data = self.data
            owner = {}
            for arm in self.arms:
                owner.update({geom: arm.prefix for geom in arm._geoms})
            return sum(1 for c in data.contact[:data.ncon]
                       if c.geom1 in owner and c.geom2 in owner and owner[c.geom1] != owner[c.geom2])

    # ------------------------------------------------------------------ cameras
    def render(self, camera: str, height: int, width: int) -> tuple[np.ndarray, float]:
        """(H, W, 3) uint8 frame of ``camera`` at the current state, and the sim time it shows."""
        with self._render_lock:
            renderer = self._renderers.get((height, width))
            if renderer is None:
                renderer = self._renderers[(height, width)] = make_renderer(self.model, height, width)
            with self.lock:
                renderer.update_scene(self.data, camera=camera)
                stamp = float(self.data.time)
            try:
                return renderer.render(), stamp
            finally:
                release_gl_context()  # any thread may render (or close) next: robot server, camera threads

    def release(self) -> None:
        """One arm is done with the world; the last one ends its clock and renderers."""
        self._open_arms -= 1
        if self._open_arms > 0 or self._closed:
            return
        self._closed = True
        if self.thread is not None:
            self._stop.set()
            self.thread.join(timeout=2.0)
        with self._render_lock:
            for renderer in self._renderers.values():
                renderer.close()
            self._renderers.clear()


class TwinBackend(SimulatedBackend):
    """One twin arm with its hand, in its own world (``TwinBackend(config)``) or in a two-arm one
    (``bimanual_twin``). Poses are in the arm's own base frame, as a real arm reports them. Thread-safe: one
    lock per world guards MjData."""

    name = "twin"
    _closed = True  # until construction finishes: closing a half-built twin has nothing to release

    def __init__(self, config: TwinConfig | None = None, *, world: TwinWorld | None = None, arm: int = 0,
                 **overrides):
        config = dataclasses.replace(config or TwinConfig(), **overrides) if overrides else (config or TwinConfig())
        own_world = world is None
        if own_world:
            world = TwinWorld(config, models.SINGLE_ARM)
        self.world = world
        self.config = world.config
        self.lockstep = world.lockstep
        self.model, self.data, self.dt = world.model, world.data, world.dt
        self._lock = world.lock
        mount = world.mounts[arm]
        self.prefix = mount.prefix
        self._base = np.array([*mount.pos, *mount.quat_xyzw])
        self._at_origin = mount.pos == (0.0, 0.0, 0.0) and mount.yaw == 0.0

        model, data, p = self.model, self.data, self.prefix
        joints = [model.joint(f"{p}joint{i}").id for i in range(1, 8)]
        q0, d0 = model.jnt_qposadr[joints[0]], model.jnt_dofadr[joints[0]]
        c0 = model.actuator(f"{p}motor1").id
        if not (np.all(model.jnt_qposadr[joints] == q0 + np.arange(7)) and np.all(model.jnt_dofadr[joints] == d0 + np.arange(7))
                and all(model.actuator(f"{p}motor{i}").id == c0 + i - 1 for i in range(1, 8))):
            raise RuntimeError("twin model: an arm's joints and motors must be consecutive")
        # views into MjData: no per-tick slicing
        self._q, self._dq = data.qpos[q0:q0 + 7], data.qvel[d0:d0 + 7]
        self._bias, self._gravcomp = data.qfrc_bias[d0:d0 + 7], data.qfrc_gravcomp[d0:d0 + 7]
        self._constraint, self._ctrl = data.qfrc_constraint[d0:d0 + 7], data.ctrl[c0:c0 + 7]
        self._finger_qpos = np.array([model.jnt_qposadr[model.joint(f"{p}finger_joint{i}").id] for i in (1, 2)])
        self._tcp = model.site(f"{p}tcp").id
        self._tcp_pos = data.site_xpos[self._tcp]
        self._tcp_xmat = data.site_xmat[self._tcp]
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))
        self._jacp_arm, self._jacr_arm = self._jacp[:, d0:d0 + 7], self._jacr[:, d0:d0 + 7]
        self._geoms = frozenset(g for g in range(model.ngeom)
                                if mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, model.geom_bodyid[g]).startswith(p)
                                and model.geom_bodyid[g] != 0) if p else frozenset()
        self.joint_low = model.jnt_range[joints, 0].copy()
        self.joint_high = model.jnt_range[joints, 1].copy()
        home = config.home_q if config.home_q is not None else models.HOME[config.robot]
        self.home_q = np.array(home, dtype=np.float64)
        self._check_q(self.home_q, "home_q")

        self.controller = ImpedanceController(config.impedance, tau_limit=model.actuator_ctrlrange[c0:c0 + 7, 1])
        self.limits = limits_for(config.robot)
        self._brake_q: np.ndarray | None = None  # joint angles the brakes hold after a reflex
        self._command = np.array([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])  # commanded target (world frame), xyz + quat xyzw
        self._target = self._command.copy()  # what the law tracks: the command, low-passed when configured
        self._filter_alpha = 1.0 if config.target_filter is None else float(config.target_filter)
        # [goal width, reference width, max change per tick]: the fingers follow at the hand's speed
        self._gripper = np.array([MAX_GRIPPER_WIDTH, MAX_GRIPPER_WIDTH, models.GRIPPER_SPEED * self.dt])
        self._gripper_ctrl = model.actuator(f"{p}gripper").id
        self._mode = "impedance"
        self._joint_move = JointMove(self.home_q.copy(), self.home_q.copy(), 0.0, 1.0)
        self._joint_done = threading.Event()
        self._errors: list[str] = []
        self._cameras: dict[str, TwinCamera] = {}
        with self._lock:
            self._reset_robot(self.home_q)
        world.attach(self)
        self._closed = False
        if own_world:
            world.start()

    # ------------------------------------------------------------------ frames
    @property
    def base_pose(self) -> np.ndarray:
        """This arm's base in the world (xyz + quat xyzw): where ``ArmPair`` places it."""
        return self._base.copy()

    def _to_world(self, pose: np.ndarray) -> np.ndarray:
        return pose if self._at_origin else compose_pose(self._base, pose)

    def _to_base(self, pose: np.ndarray) -> np.ndarray:
        return pose if self._at_origin else relative_pose(pose, self._base)

    def _vector_to_base(self, vector: np.ndarray) -> np.ndarray:
        """A world-frame (6,) twist or wrench in the base frame."""
        if self._at_origin:
            return vector
        inverse = quat_conjugate(self._base[3:])
        return np.concatenate([rotate(inverse, vector[:3]), rotate(inverse, vector[3:])])

    # ------------------------------------------------------------------ physics of this arm
    def _reset_robot(self, q: np.ndarray) -> None:
        data = self.data
        self._q[:] = q
        self._dq[:] = 0.0
        data.qpos[self._finger_qpos] = self._gripper[1] / 2
        self._ctrl[:] = 0.0
        data.ctrl[self._gripper_ctrl] = self._gripper[1] / 2
        mujoco.mj_forward(self.model, data)
        self._snap_target_to_tcp()
        self.controller.reset(q)
        self._mode = "impedance"
        self._brake_q = None

    def _snap_target_to_tcp(self) -> None:
        """Target and command := the TCP pose of the current kinematics (hold still here)."""
        self._command[:3] = self._tcp_pos
        matrix_to_quat_xyzw(self._tcp_xmat, self._command[3:])
        self._target[:] = self._command

    def _apply_control(self) -> None:
        """This arm's torques for the tick between ``mj_step1`` and ``mj_step2`` (the Python loop)."""
        if self._mode == "impedance":
            mujoco.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self._tcp)
            self.controller.compute(self._jacp_arm, self._jacr_arm, self._tcp_pos, self._tcp_xmat, self._q,
                                    self._dq, self._bias, self._gravcomp, self._target, self._ctrl)
        elif self._mode == "joint":
            self._ctrl[:] = self._joint_servo(self._q, self._dq, self._bias - self._gravcomp)
        gripper = self._gripper
        diff = gripper[0] - gripper[1]
        if diff != 0.0:
            gripper[1] += min(max(diff, -gripper[2]), gripper[2])
            self.data.ctrl[self._gripper_ctrl] = gripper[1] / 2

    def _apply_brakes(self) -> None:
        if self._brake_q is not None:  # a reflex engaged the brakes: the arm stands still
            self._q[:] = self._brake_q
            self._dq[:] = 0.0

    def _joint_servo(self, q, dq, coriolis) -> np.ndarray:
        t = float(self.data.time)
        tau = self._joint_move.torque(t, q, dq, coriolis, self.controller.tau_limit)
        self.controller.tau[:] = tau
        if self._joint_move.settled(t, q, dq):
            self._finish_joint_reset()
        return tau

    def _finish_joint_reset(self) -> None:
        self._snap_target_to_tcp()
        self.controller.q_ns[:] = self._joint_move.goal
        self._mode = "impedance"
        self._joint_done.set()

    def _judges_every_tick(self) -> bool:
        return self._mode == "impedance" and self.controller.gains[RATE] > self.limits.torque_step(self.dt)

    def _check_reflexes(self, tau_before: np.ndarray | None) -> None:
        if self._mode == "idle":
            return
        dq = self._dq
        tcp_vel = None
        if self._mode == "impedance":  # the law refreshed the TCP Jacobian this tick
            tcp_vel = np.concatenate([self._jacp_arm @ dq, self._jacr_arm @ dq])
        reflex = velocity_reflex(self.limits, dq, tcp_vel)
        if reflex is None and tau_before is not None:
            reflex = torque_rate_reflex(self.limits, self.controller.tau, tau_before, self.dt)
        if reflex is not None:
            self._errors.append(reflex)
            self._mode = "idle"
            self._brake_q = self._q.copy()
            self._dq[:] = 0.0
            self._ctrl[:] = 0.0
            self.controller.tau[:] = 0.0
            self._joint_done.set()

    def _hold_peg(self) -> None:
        """The peg in the closed hand at the TCP (the peg-insertion scene's start)."""
        mujoco.mj_kinematics(self.model, self.data)
        rot = self._tcp_xmat.reshape(3, 3)
        tcp_quat = matrix_to_quat_xyzw(self._tcp_xmat, np.empty(4))
        self.world.set_free_body("peg", self._tcp_pos + rot[:, 2] * PEG_TCP_OFFSET, tcp_quat)
        self.data.qpos[self._finger_qpos] = models.PEG_HALF
        self.data.qvel[self._finger_qpos] = 0.0
        self._gripper[:2] = 0.0
        self.data.ctrl[self._gripper_ctrl] = 0.0

    def advance(self, seconds: float) -> None:
        """Lockstep: run the world's physics (every arm in it) for ``seconds`` of sim time."""
        self.world.advance(seconds)

    # ------------------------------------------------------------------ Backend API
    def state(self) -> RobotState:
        with self._lock:
            data = self.data
            jac = self._tcp_jacobian()
            quat = matrix_to_quat_xyzw(self._tcp_xmat, np.empty(4))
            dq = self._dq.copy()
            # Torque the environment puts on the arm (contacts, including a grasped object's
            # weight) mapped to a wrench at the TCP, as Franka's external-wrench estimate.
            wrench = np.linalg.lstsq(jac.T, self._constraint, rcond=None)[0]
            tcp_pose = self._to_base(np.concatenate([self._tcp_pos, quat]))
            if tcp_pose[6] < 0:
                tcp_pose[3:] = -tcp_pose[3:]
            return RobotState(
                tcp_pose=tcp_pose,
                tcp_vel=self._vector_to_base(jac @ dq),
                wrench=self._vector_to_base(wrench),
                q=self._q.copy(),
                dq=dq,
                gripper_width=float(np.clip(data.qpos[self._finger_qpos].sum(), 0.0, MAX_GRIPPER_WIDTH)),
                target_pose=self._to_base(self._command.copy()),
                controller_mode=self._mode,
                errors=list(self._errors),
                timestamp=float(data.time),
            )

    def hand_poses(self) -> tuple[np.ndarray, np.ndarray]:
        """The TCP pose of the last physics tick and the command, without the Jacobian and wrench ``state`` adds."""
        with self._lock:
            tcp = np.concatenate([self._tcp_pos, matrix_to_quat_xyzw(self._tcp_xmat, np.empty(4))])
            command = self._command.copy()
        return self._to_base(tcp), self._to_base(command)

    def jacobian(self) -> np.ndarray:
        with self._lock:
            jac = self._tcp_jacobian()
        if self._at_origin:
            return jac
        rot = quat_to_matrix(self._base[3:]).T
        return np.vstack([rot @ jac[:3], rot @ jac[3:]])

    def impedance(self) -> ImpedanceParams:
        with self._lock:
            return self.controller.params

    def _tcp_jacobian(self) -> np.ndarray:
        """The TCP's (6, 7) world-frame Jacobian at the current joints (call with the lock held)."""
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)
        mujoco.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self._tcp)
        return np.vstack([self._jacp_arm, self._jacr_arm])

    def set_target(self, pose, gripper=None) -> None:
        pose = validate_pose(pose, "pose")
        width = None if gripper is None else validate_gripper(gripper, "gripper")
        with self._lock:
            if self._brake_q is not None:
                raise RuntimeError(f"twin arm stopped by a reflex ({'; '.join(self._errors)}); call recover()")
            if self._mode == "impedance":
                self._command[:] = self._to_world(pose)
            if width is not None:
                self._gripper[0] = width

    def set_gripper(self, width) -> None:
        width = validate_gripper(width, "width")
        with self._lock:
            self._gripper[0] = width

    def set_impedance(self, params: ImpedanceParams) -> None:
        with self._lock:
            self.controller.set_params(params)

    def set_nullspace_target(self, q) -> None:
        """Joint posture the nullspace term pulls towards (7 joint angles inside the limits)."""
        q = self._check_q(q, "q")
        with self._lock:
            self.controller.q_ns[:] = q

    @property
    def nullspace_target(self) -> np.ndarray:
        with self._lock:
            return self.controller.q_ns.copy()

    def _check_q(self, q, field: str) -> np.ndarray:
        return validate_joints(q, field, self.joint_low, self.joint_high)

    def home_joints(self) -> np.ndarray:
        return np.array(self.home_q, dtype=np.float64)

    def joint_reset(self, q=None, duration: float = 3.0) -> None:
        """Minimum-jerk joint move to ``q`` (home when None) over ``duration`` s, then hold by impedance."""
        goal = self.home_q.copy() if q is None else self._check_q(q, "q")
        duration = float(duration)
        if not np.isfinite(duration) or not 0.05 <= duration <= 60.0:
            raise ValueError(f"duration: must be in [0.05, 60] s, got {duration}")
        with self._lock:
            if self._mode == "idle":
                raise RuntimeError("twin is in an error state; call recover() first")
            self._joint_move = JointMove.plan(self.limits, self._q, goal, self.data.time, duration)
            duration = self._joint_move.duration
            self._joint_done.clear()
            self._mode = "joint"
            if self.lockstep:
                budget = int((duration + 5.0) / self.dt)
                while self._mode == "joint" and budget > 0:
                    self.world.run_ticks(50)
                    budget -= 50
        if not self.lockstep:
            self._joint_done.wait(timeout=duration + 5.0)
        with self._lock:
            if self._mode == "joint":
                self._finish_joint_reset()
                self._errors.append("joint_reset_timeout")
            elif self._brake_q is not None:
                raise RuntimeError(f"joint reset stopped by a reflex ({'; '.join(self._errors)}); call recover()")

    def recover(self) -> None:
        with self._lock:
            if self._brake_q is not None:  # after a reflex the arm restarts where it stopped, torque from zero
                self._brake_q = None
                self.controller.tau[:] = 0.0
            elif self._mode == "idle":  # unstable physics: start again from home
                self._reset_robot(self.home_q)
            self._errors.clear()
            self._mode = "impedance"
            mujoco.mj_kinematics(self.model, self.data)
            self._snap_target_to_tcp()

    def hold(self) -> None:
        with self._lock:
            mujoco.mj_kinematics(self.model, self.data)
            self._snap_target_to_tcp()

    def reset_robot(self, q=None) -> None:
        """Sim only: put the arm at rest at ``q`` (home when None), hand open, errors cleared.

        Lets sim episodes start from an identical physics state (reproducible resets, check_env).
        """
        goal = self.home_q.copy() if q is None else self._check_q(q, "q")
        with self._lock:
            self._gripper[:2] = MAX_GRIPPER_WIDTH
            self._dq[:] = 0.0
            self.data.qacc_warmstart[:] = 0.0
            self._reset_robot(goal)
            self._errors.clear()

    # ------------------------------------------------------------------ scene
    @property
    def scene(self) -> dict[str, np.ndarray]:
        """Object poses (xyz + quat xyzw, this arm's base frame) of the task objects."""
        return {name: self._to_base(pose) for name, pose in self.world.scene().items()}

    def reset_scene(self, seed: int | None = None, region: str = "A") -> None:
        """Random object poses (see module doc); deterministic for a given seed.

        ``region``: ``relocate`` only, the region (``models.RELOCATE_REGIONS``) the cube is put in.
        """
        self.world.reset_scene(seed, region)

    def _set_free_body(self, name: str, position, quat_xyzw) -> None:
        self.world.set_free_body(name, position, quat_xyzw)

    # ------------------------------------------------------------------ cameras
    def cameras(self) -> dict[str, TwinCamera]:
        """The configured cameras (created on first call): this arm's wrist camera, and the world's front camera."""
        if not self._cameras:
            for name in self.config.cameras:
                scoped = f"{self.prefix}{name}" if name == "wrist" else name
                self._cameras[name] = TwinCamera(scoped, self.world.render, self.config)
        return dict(self._cameras)

    def render(self, camera: str, height: int, width: int) -> tuple[np.ndarray, float]:
        """(H, W, 3) uint8 frame of ``camera`` at the current state, and the sim time it shows."""
        return self.world.render(camera, height, width)

    @property
    def _thread(self) -> threading.Thread | None:
        return self.world.thread

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.world.release()


def bimanual_twin(config: TwinConfig | None = None, layout: str = "side_by_side",
                  separation: float = models.BIMANUAL_SEPARATION, **overrides) -> tuple[TwinBackend, TwinBackend]:
    """Two twin arms in one world (one clock, one physics: the arms can touch each other), each its own backend
    with poses in its own base frame: (left, right). Advancing either advances both."""
    config = dataclasses.replace(config or TwinConfig(), **overrides) if overrides else (config or TwinConfig())
    world = TwinWorld(config, models.bimanual_mounts(layout, separation))
    arms = (TwinBackend(config, world=world, arm=0), TwinBackend(config, world=world, arm=1))
    world.start()
    return arms
