"""The ``serl`` command: subcommands, typed configs that reject unknown keys, configs that round-trip through JSON."""

import dataclasses
import json
import subprocess
import sys

import pytest

from serl.cli.main import COMMANDS, main
from serl.runtime.config import (
    ActorConfig,
    EnvConfig,
    LearnerConfig,
    NetConfig,
    RunConfig,
    run_config_hash,
    from_dict,
    to_jsonable,
    write_config,
)


def serl(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "serl.cli.main", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "learner", "actor", "serve", "eval", "record-demos", "demos", "classifier", "bench"):
        assert name in COMMANDS and name in out


def test_unknown_command_is_an_error(capsys):
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_unknown_option_is_rejected_by_tyro():
    result = serl("learner", "--env.task", "PandaPickCube", "--no-such-option", "3")
    assert result.returncode != 0
    assert "no-such-option" in result.stderr


def test_train_parses_positional_task_and_nested_agent_options():
    import tyro

    from serl.cli.train import TrainConfig

    cfg = tyro.cli(TrainConfig, args=["PandaPegInsertion", "--env-steps", "500", "--agent.num-qs", "4",
                                      "--overrides", "max_episode_steps=50"])
    assert cfg.task == "PandaPegInsertion" and cfg.env_steps == 500 and cfg.agent.num_qs == 4
    assert cfg.overrides == ("max_episode_steps=50",)
    with pytest.raises(ValueError, match="env_steps"):
        TrainConfig(env_steps=0)
    with pytest.raises(ValueError, match="demo_noise"):
        TrainConfig(demo_noise=-0.1)


def test_configs_round_trip_through_json(tmp_path):
    learner = LearnerConfig(
        env=EnvConfig(task="PandaPickCube", overrides=("max_episode_steps=40",)),
        run=RunConfig(root=tmp_path, name="x", seed=3), net=NetConfig(port=7000, weights_port=7001),
        demos=tmp_path / "demos.h5", batch_size=32, resume=True,
    )
    path = write_config(tmp_path, learner)
    data = json.loads(path.read_text())
    assert data["kind"] == "LearnerConfig" and data["env"]["overrides"] == ["max_episode_steps=40"]
    assert from_dict(LearnerConfig, data) == learner
    actor = ActorConfig(max_lag=5, teleop="keyboard")
    assert from_dict(ActorConfig, json.loads(json.dumps(to_jsonable(actor)))) == actor
    with pytest.raises(ValueError, match="unknown keys"):
        from_dict(LearnerConfig, {**data, "bogus": 1})


def test_bad_values_name_the_field():
    with pytest.raises(ValueError, match="demo_ratio"):
        LearnerConfig(demo_ratio=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        LearnerConfig(batch_size=0)
    with pytest.raises(ValueError, match="env.overrides"):
        EnvConfig(overrides=("no_equals_sign",)).override_dict()
    with pytest.raises(ValueError, match="grasp_penalty"):
        EnvConfig(grasp_penalty=-0.1)
    with pytest.raises(ValueError, match="grasp-critic"):  # nothing else would pay it
        ActorConfig(env=EnvConfig(grasp_penalty=0.02))
    assert EnvConfig(overrides=("max_episode_steps=50", "reward=keyboard")).override_dict() == {
        "max_episode_steps": 50, "reward": "keyboard"}


def test_config_hash_changes_with_what_actor_and_learner_must_share():
    base = LearnerConfig()
    same = run_config_hash(base.env, base.agent)
    assert run_config_hash(EnvConfig(), base.agent) == same
    assert run_config_hash(EnvConfig(pixels=True), base.agent) != same
    assert run_config_hash(EnvConfig(grasp_penalty=0.02), base.agent) != same
    assert run_config_hash(base.env, dataclasses.replace(base.agent, num_qs=4)) != same
    # where the actor's robot is does not matter to the learner
    assert run_config_hash(EnvConfig(robot_url="http://10.0.0.2:5000"), base.agent) == same


def test_eval_refuses_a_directory_without_a_run(tmp_path):
    result = serl("eval", "--run-dir", str(tmp_path))
    assert result.returncode != 0 and "config.json" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["train", "PandaPickCub"], "unknown task 'PandaPickCub' (did you mean PandaPickCube?); registered: "),
    (["train", "gym:NoSuchEnv-v0"], "unknown gymnasium env 'gym:NoSuchEnv-v0'"),
    (["train", "PandaPickCube", "--overrides", "max_episode_stepz=5"], "unknown TaskConfig fields"),
    (["train", "PandaPickCube", "--resume"], "--resume: no run of PandaPickCube to continue"),
])
def test_a_wrong_task_or_config_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "serl.cli.main", *args], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"serl train: {message}") and result.stderr.count("\n") == 1, result.stderr
    if "unknown task" in message:
        assert "registered: PandaPegInsertion, PandaPickCube" in result.stderr
    assert list(tmp_path.iterdir()) == []
    debug = subprocess.run([sys.executable, "-m", "serl.cli.main", *args, "--debug"], capture_output=True,
                           text=True, timeout=60, cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_the_stop_report_believes_the_files_on_disk_only(tmp_path):
    from serl.cli.train import checkpoint_report
    from serl.runtime.logging import write_status

    status = tmp_path / "status" / "learner.json"
    write_status(status, {"updates": 0, "phase": "compiling the update"})
    assert checkpoint_report(tmp_path, -9) == ("no checkpoint written: the learner was killed (exit -9) before saving: "
                                              "it was compiling its first update, so no update finished yet; "
                                              "none is on disk")
    write_status(status, {"done": True, "checkpoint_step": 40, "checkpoint_note": "checkpoint written at env step 40"})
    assert checkpoint_report(tmp_path, 0) == ("no checkpoint written: the learner reported env step 40, but its files "
                                             "are missing; none is on disk")
    (tmp_path / "checkpoints" / "agent" / "40.orbax-checkpoint-tmp").mkdir(parents=True)  # a save cut short
    assert checkpoint_report(tmp_path, 0).startswith("no checkpoint written")
    (tmp_path / "checkpoints" / "agent" / "40").mkdir(parents=True)
    assert checkpoint_report(tmp_path, 0) == "checkpoint written at env step 40"


def test_plain_progress_says_each_phase_once_then_the_readme_figures(tmp_path, capsys):
    from serl.runtime.logging import TrainProgress, write_status

    progress = TrainProgress(tmp_path, 1000, live=False, pixels=True)
    write_status(tmp_path / "status" / "actor.json", {"env_steps": 0, "phase": "compiling the policy"})
    write_status(tmp_path / "status" / "learner.json", {"updates": 0, "backend": "cpu"})
    for _ in range(3):
        progress.update()
    assert capsys.readouterr().out.count("actor: compiling the policy…") == 1
    write_status(tmp_path / "status" / "actor.json", {"env_steps": 200, "episodes": 2, "weights_version": 3})
    write_status(tmp_path / "status" / "learner.json", {"updates": 100, "updates_per_s": 0.04, "backend": "cpu",
                                                        "online_size": 200, "demo_size": 501, "critic_loss": 0.25,
                                                        "temperature": 0.01})
    for _ in range(3):
        progress.update()
    progress.close()
    out = capsys.readouterr().out
    assert out.count("pixels on the CPU: 0.04 updates/s") == 1 and "800 env steps left take about 5.6 h" in out
    assert out.count("env_steps=200/1000") == 1
    for figure in ("online_buffer=200", "demo_buffer=501", "critic_loss=0.25", "temperature=0.01", "updates/s=0.04"):
        assert figure in out
