"""Gymnasium envs for the twin and the real arm: ``FrankaEnv``, tasks, wrappers, reset hooks.

Importing this package registers the sim tasks with gymnasium but does not import MuJoCo;
the twin loads when an env is made (``gymnasium.make("serl/PandaPickCube-v0")``).
"""

import gymnasium

SIM_ENV_IDS = {
    "serl/PandaPickCube-v0": {"task_name": "PandaPickCube", "pixels": False},
    "serl/PandaPickCubePixels-v0": {"task_name": "PandaPickCube", "pixels": True},
    "serl/PandaPegInsertion-v0": {"task_name": "PandaPegInsertion", "pixels": False},
    "serl/PandaPegInsertionPixels-v0": {"task_name": "PandaPegInsertion", "pixels": True},
}

TWO_ARM_ENV_IDS = {"serl/PandaHandover-v0": {"task_name": "PandaHandover"}}

for _env_id, _kwargs in SIM_ENV_IDS.items():
    if _env_id not in gymnasium.registry:
        # No max_episode_steps here: FrankaEnv truncates at TaskConfig.max_episode_steps itself,
        # so an override of that field is not cut short by a second TimeLimit.
        gymnasium.register(id=_env_id, entry_point="serl.envs.tasks:make_sim_env", kwargs=_kwargs)
for _env_id, _kwargs in TWO_ARM_ENV_IDS.items():
    if _env_id not in gymnasium.registry:
        gymnasium.register(id=_env_id, entry_point="serl.envs.bimanual:make_bimanual_sim_env", kwargs=_kwargs)
