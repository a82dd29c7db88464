"""A CI-sized task for the runtime tests: ``PandaReach``, the twin's PandaPickCube scene with the goal of moving
the hand to a fixed point 10 cm lower than the reset pose (success within 3 cm; dense reward).

``PandaReachTwice``: a task cycle of PandaReach and its copy ``PandaReachAgain`` (neither goal holds at the
start, so they simply alternate), for the task-cycle runtime tests.

Imported by actor and learner processes through ``--env.task-module`` (it registers the task). It learns in
about a thousand env steps with scripted demos; lifting the cube (PandaPickCube) needs ~10k steps and is
measured by benchmarks/sample_efficiency.py instead.
"""

import dataclasses

import numpy as np

from serl.envs.task_cycles import TaskCycle, is_cycle, register_cycle
from serl.envs.task_config import ResetHookSpec
from serl.envs.tasks import PANDA_PICK_CUBE, list_tasks, register_task

GOAL = np.array([0.5, 0.0, 0.10])  # base frame, m
THRESHOLD = 0.03  # m


@dataclasses.dataclass
class ReachReward:
    """Dense: minus five times the distance to ``GOAL`` (per step); success inside ``THRESHOLD``."""

    def reset(self, scene, state) -> None:
        pass

    def __call__(self, scene, state) -> tuple[float, bool]:
        distance = float(np.linalg.norm(np.asarray(state.tcp_pose[:3]) - GOAL))
        success = distance < THRESHOLD
        return (1.0 if success else -5.0 * distance), success


REACH = dataclasses.replace(
    PANDA_PICK_CUBE, name="PandaReach", gripper_mode="none", max_episode_steps=25, action_scale=(0.03, 0.1, 1.0),
    dense_reward=True,
)

if "PandaReach" not in list_tasks():
    register_task(REACH, lambda task: ReachReward())


def record_reach_demos(path, episodes: int = 10, seed: int = 0, noise: float = 0.1) -> int:
    """Scripted demos (P-controller on the relative-frame state) into an HDF5 episode file.

    Observations are recorded after the relative-frame and euler wrappers, before flattening: exactly the
    named entries the learner flattens in the env's state order. Returns the number of transitions.
    """
    from robot_servers.control.pose import quat_conjugate, rotate
    from serl.data.episodes import EpisodeRecorder, EpisodeWriter
    from serl.envs.tasks import make_sim_env
    from serl.envs.wrappers import QuatToEuler, RelativeFrame

    rng = np.random.default_rng(seed)
    relative = RelativeFrame(make_sim_env("PandaReach", seed=seed))
    env = QuatToEuler(relative)
    recorder = EpisodeRecorder(task="PandaReach", source="scripted")
    transitions = 0
    with EpisodeWriter(path, config={"task": "PandaReach"}) as writer:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            recorder.start(obs)
            reset = relative.reset_pose
            goal = rotate(quat_conjugate(reset[3:]), GOAL - reset[:3])
            done = False
            while not done:
                delta = goal - np.asarray(obs["state"]["tcp_pose"][:3])
                action = np.zeros(6, np.float32)
                action[:3] = np.clip(delta / REACH.action_scale[0] + rng.normal(0, noise, 3), -1, 1)
                next_obs, reward, terminated, truncated, info = env.step(action)
                recorder.add(action, reward, next_obs, terminated, truncated, info)
                obs, done = next_obs, terminated or truncated
                transitions += 1
            writer.write(recorder.finish())
    env.close()
    return transitions
if "PandaReachAgain" not in list_tasks():
    register_task(dataclasses.replace(REACH, name="PandaReachAgain"), lambda task: ReachReward())
if not is_cycle("PandaReachTwice"):
    register_cycle(TaskCycle("PandaReachTwice", ("PandaReach", "PandaReachAgain"),
                             fallback_hooks=(ResetHookSpec("scene_reset"),)))
