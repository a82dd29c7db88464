"""A CI-sized task for the runtime tests: the twin's PandaPickCube scene, success = hand within 3 cm of a point 5 cm above the cube.

Imported by actor and learner processes through ``--env.task-module`` (it registers ``PandaReachCube``).
Reaching learns in a few thousand env steps on two CPU cores; lifting the cube needs about 10k.
"""

import dataclasses

import numpy as np

from serl.envs.tasks import PANDA_PICK_CUBE, list_tasks, register_task

HOVER = 0.05  # m above the cube centre
THRESHOLD = 0.03  # m


@dataclasses.dataclass
class ReachCubeReward:
    """Dense: minus the distance to the hover point (per step); success inside ``THRESHOLD``."""

    def reset(self, scene, state) -> None:
        pass

    def __call__(self, scene, state) -> tuple[float, bool]:
        goal = np.asarray(scene["cube"][:3]) + np.array([0.0, 0.0, HOVER])
        distance = float(np.linalg.norm(np.asarray(state.tcp_pose[:3]) - goal))
        success = distance < THRESHOLD
        return (1.0 if success else -distance * 5.0), success


REACH_CUBE = dataclasses.replace(
    PANDA_PICK_CUBE, name="PandaReachCube", gripper_mode="none", max_episode_steps=25, action_scale=(0.03, 0.1, 1.0),
    dense_reward=True,
)

if "PandaReachCube" not in list_tasks():
    register_task(REACH_CUBE, lambda task: ReachCubeReward())


def record_reach_demos(path, episodes: int = 10, seed: int = 0, noise: float = 0.1) -> int:
    """Scripted reaching demos (P-controller on the relative-frame state) into an HDF5 episode file.

    Observations are recorded after the relative-frame and euler wrappers, before flattening: exactly the
    named entries the learner flattens in the env's state order. Returns the number of transitions.
    """
    from robot_servers.control.pose import quat_conjugate, rotate
    from serl.data.episodes import EpisodeRecorder, EpisodeWriter
    from serl.envs.tasks import make_sim_env
    from serl.envs.wrappers import QuatToEuler, RelativeFrame

    rng = np.random.default_rng(seed)
    relative = RelativeFrame(make_sim_env("PandaReachCube", seed=seed))
    env = QuatToEuler(relative)
    recorder = EpisodeRecorder(task="PandaReachCube", source="scripted")
    transitions = 0
    with EpisodeWriter(path, config={"task": "PandaReachCube"}) as writer:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            recorder.start(obs)
            hover = rotate(quat_conjugate(relative.reset_pose[3:]), np.array([0.0, 0.0, HOVER]))
            done = False
            while not done:
                goal = np.asarray(obs["state"]["cube_pose"][:3]) + hover
                delta = goal - np.asarray(obs["state"]["tcp_pose"][:3])
                action = np.zeros(6, np.float32)
                action[:3] = np.clip(delta / REACH_CUBE.action_scale[0] + rng.normal(0, noise, 3), -1, 1)
                next_obs, reward, terminated, truncated, info = env.step(action)
                recorder.add(action, reward, next_obs, terminated, truncated, info)
                obs, done = next_obs, terminated or truncated
                transitions += 1
            writer.write(recorder.finish())
    env.close()
    return transitions
