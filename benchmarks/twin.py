"""Twin speed: state-only and pixel env steps, render rate; gym-hil's PandaPickCube side by side.

    python benchmarks/twin.py            # full run; creates .venvs/gym-hil (pip install gym-hil) when missing
    python benchmarks/twin.py --quick    # smoke mode for CI: a few hundred ticks, no peer

Everything runs pinned to one CPU core (llvmpipe too), as the issue's targets are per core.
An "env step" is what FrankaEnv does per 10 Hz control period: read the state, send a target,
advance 0.1 s of physics (100 ticks at 1 kHz, impedance law every tick); pixel steps also render
both cameras at 128×128. gym-hil steps its own env (opspace law, 500 Hz physics, 50 substeps).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
PEER_VENV = ROOT / ".venvs" / "gym-hil"
TARGETS = {"state_env_steps_per_s": 300, "render_fps_128": 250, "pixel_env_steps_per_s": 100}

PEER_SCRIPT = r"""
import json, sys, time
import numpy as np
from gym_hil.envs import PandaPickCubeGymEnv
state_steps, pixel_steps = int(sys.argv[1]), int(sys.argv[2])
out = {"mujoco": __import__("mujoco").__version__}
for key, image_obs, steps in (("state_env_steps_per_s", False, state_steps), ("pixel_env_steps_per_s", True, pixel_steps)):
    env = PandaPickCubeGymEnv(image_obs=image_obs)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    env.step(env.action_space.sample())
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(steps):
        _, _, terminated, truncated, _ = env.step(rng.uniform(-0.3, 0.3, 7).astype(np.float32))
        if terminated or truncated:
            env.reset()
    out[key] = steps / (time.perf_counter() - start)
    out[key.replace("_per_s", "_per_cpu_s")] = steps / (time.process_time() - cpu)
    out[key.replace("_per_s", "_measured")] = steps
    out["physics_hz"] = 1.0 / env.physics_dt
    out["image_size"] = [env._render_specs.height, env._render_specs.width]
print(json.dumps(out))
"""


def pin_to_one_core() -> int | None:
    """Pin this process (and what it spawns: llvmpipe threads, the peer) to one CPU."""
    os.environ.setdefault("LP_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        core = sorted(os.sched_getaffinity(0))[-1]
        os.sched_setaffinity(0, {core})
        return core
    except (AttributeError, OSError):
        return None


def rate(key: str, count: int, run) -> dict:
    """``run()`` timed on the wall clock and in process CPU time (the CPU figure is robust to other
    processes sharing the core, which is how this shared machine runs)."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    cpu_key = key.replace("_per_s", "_per_cpu_s") if key.endswith("_per_s") else f"{key}_cpu"
    return {key: count / wall, cpu_key: count / max(cpu, 1e-9)}


def random_walk_target(state, rng, box):
    import numpy as np

    pose = state.tcp_pose.copy()
    pose[:3] = np.clip(pose[:3] + rng.uniform(-0.02, 0.02, 3), box[0], box[1])
    return pose


def measure_ours(steps: int, render_frames: int) -> dict:
    import numpy as np

    from robot_servers.backends.twin import TwinBackend, TwinConfig

    box = (np.array([0.35, -0.15, 0.05]), np.array([0.6, 0.15, 0.4]))
    out = {}
    with TwinBackend(TwinConfig(scene="pick_cube", seed=0)) as backend:
        rng = np.random.default_rng(0)
        cameras = list(backend.cameras().values())
        backend.advance(0.1)  # warm caches
        for camera in cameras:
            camera.read()

        def state_steps():
            for _ in range(steps):
                backend.set_target(random_walk_target(backend.state(), rng, box), gripper=float(rng.uniform(0, 0.08)))
                backend.advance(0.1)

        def frames():
            for i in range(render_frames):
                cameras[i % len(cameras)].read()

        def pixel_steps():
            for _ in range(steps):
                backend.set_target(random_walk_target(backend.state(), rng, box))
                backend.advance(0.1)
                for camera in cameras:
                    camera.read()

        out.update(rate("state_env_steps_per_s", steps, state_steps))
        out["physics_ticks_per_s"] = out["state_env_steps_per_s"] * 100
        out["physics_ticks_per_cpu_s"] = out["state_env_steps_per_cpu_s"] * 100
        out["real_time_factor"] = out["state_env_steps_per_s"] * 0.1
        out.update(rate("render_fps_128", render_frames, frames))
        out.update(rate("pixel_env_steps_per_s", steps, pixel_steps))

    with TwinBackend(TwinConfig(scene="pick_cube", image_size=(480, 640))) as backend:
        cameras = list(backend.cameras().values())
        for camera in cameras:
            camera.read()
        count = max(render_frames // 4, 2)
        out.update(rate("render_fps_640x480", count, lambda: [cameras[i % 2].read() for i in range(count)]))
    out["physics_hz"] = 1000
    out["control_hz"] = 10
    return out


def measure_env(steps: int) -> dict:
    """The same through FrankaEnv (serl/PandaPickCube-v0), when the env package is there."""
    try:
        import gymnasium as gym

        import serl.envs  # noqa: F401 - registers the tasks

        out = {}
        for env_id, key in (("serl/PandaPickCube-v0", "state_env_steps_per_s"),
                            ("serl/PandaPickCubePixels-v0", "pixel_env_steps_per_s")):
            env = gym.make(env_id)
            env.reset(seed=0)
            env.action_space.seed(0)

            def run(env=env):
                for _ in range(steps):
                    _, _, terminated, truncated, _ = env.step(env.action_space.sample())
                    if terminated or truncated:
                        env.reset()

            out.update(rate(key, steps, run))
            env.close()
        return out
    except Exception as exc:  # noqa: BLE001 - optional figure; report why it is missing
        return {"skipped": f"{type(exc).__name__}: {exc}"[:300]}


def ensure_peer_venv() -> pathlib.Path:
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import gym_hil"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "gym-hil"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return python


def measure_peer(steps: int) -> dict:
    try:
        python = ensure_peer_venv()
    except (subprocess.CalledProcessError, OSError) as exc:
        return {"skipped": f"could not install gym-hil into {PEER_VENV}: {exc}"}
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    pixel_steps = max(steps // 10, 10)  # gym-hil renders full meshes with shadows: ~1 s per pixel step here
    result = subprocess.run([str(python), "-c", PEER_SCRIPT, str(steps), str(pixel_steps)], capture_output=True, text=True,
                            env=env, timeout=1800)
    if result.returncode != 0:
        return {"skipped": f"gym-hil run failed: {result.stderr[-500:]}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: a few hundred ticks, no peer")
    parser.add_argument("--steps", type=int, default=300, help="env steps per measurement (full mode)")
    parser.add_argument("--no-peer", action="store_true", help="skip gym-hil")
    args = parser.parse_args()

    core = pin_to_one_core()
    sys.path.insert(0, str(ROOT))
    steps = 3 if args.quick else args.steps
    report = {
        "benchmark": "twin",
        "mode": "quick" if args.quick else "full",
        "pinned_core": core,
        "env_steps_measured": steps,
        "ours": measure_ours(steps, render_frames=10 if args.quick else 400),
        "targets": TARGETS,
    }
    if not args.quick:
        report["ours_via_franka_env"] = measure_env(steps)
    if args.quick or args.no_peer:
        report["peer_gym_hil"] = {"skipped": "quick mode" if args.quick else "--no-peer"}
    else:
        peer = measure_peer(steps)
        report["peer_gym_hil"] = peer
        if "skipped" not in peer:
            report["ratio_ours_over_gym_hil"] = {
                key: report["ours"][key] / peer[key]
                for key in ("state_env_steps_per_s", "pixel_env_steps_per_s",
                            "state_env_steps_per_cpu_s", "pixel_env_steps_per_cpu_s")
            }
    report["units"] = ("*_per_s and render_fps_*: per second of wall-clock time on one pinned core; *_per_cpu_s and "
                       "render_fps_*_cpu: per second of process CPU time (robust to other load on the core); Hz")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
