"""Launch files: valid Python, declare every parameter a user sets, and build a server command line
that the real ``python -m robot_servers`` parser accepts (launch/launch_ros are not on PyPI)."""

from __future__ import annotations

import ast
import pathlib
import py_compile

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parents[1] / "launch"


def declared_arguments(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DeclareLaunchArgument":
            if node.args and isinstance(node.args[0], ast.Constant):
                names.add(node.args[0].value)
    return names


@pytest.mark.parametrize("path", sorted(LAUNCH.glob("*.launch.py")), ids=lambda p: p.name)
def test_launch_file_compiles_and_defines_a_description(path):
    py_compile.compile(str(path), doraise=True)
    tree = ast.parse(path.read_text())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions


def test_fr3_launch_names_every_parameter_a_user_sets():
    names = declared_arguments(LAUNCH / "fr3_crisp.launch.py")
    assert {"robot_ip", "arm_id", "load_gripper", "task", "cameras", "port", "token",
            "target_pose_topic", "current_pose_topic", "joint_states_topic", "controller_node"} <= names


def load_server_command():
    """``server_command`` and its constants from robot_server.launch.py, without importing launch."""
    source = (LAUNCH / "robot_server.launch.py").read_text()
    tree = ast.parse(source)
    keep = [n for n in tree.body if (isinstance(n, ast.Assign) and n.targets[0].id != "REPO") or
            (isinstance(n, ast.FunctionDef) and n.name == "server_command")]
    namespace: dict = {}
    exec(compile(ast.Module(body=keep, type_ignores=[]), "robot_server.launch.py", "exec"), namespace)
    return namespace


def test_server_command_parses_with_the_real_cli():
    tyro = pytest.importorskip("tyro")
    from robot_servers.overrides import parse_overrides
    from serl.cli.serve import ServeCommand

    ns = load_server_command()
    values = {name: default for name, (default, _) in ns["ARGUMENTS"].items()}
    values.update(task="PegInsertion", python="/opt/venv/bin/python", port="5001",
                  cameras="realsense:wrist_1=128422270679;opencv:side=/dev/video4,size=96x96")
    command = ns["server_command"](values)
    assert command[:3] == ["/opt/venv/bin/python", "-m", "examples.serve"]
    config = tyro.cli(ServeCommand, args=command[3:])
    assert config.backend == "ros2" and config.port == 5001 and config.task == "PegInsertion"
    options = parse_overrides(config.option, "--option")
    assert list(options["cameras"]) == ["realsense:wrist_1=128422270679", "opencv:side=/dev/video4,size=96x96"]
    assert options["gripper_normalized"] is True and options["stale_after"] == 0.1
    from robot_servers.backends.ros2 import Ros2Config

    Ros2Config(**options)  # every option is a real Ros2Config field with a valid value


def test_example_tasks_register_for_the_server():
    import sys

    sys.path.insert(0, str(LAUNCH.parent))
    from examples.registry import register_examples
    from serl.envs.tasks import get_task

    names = register_examples()
    assert {"PegInsertion", "PcbInsertion", "CableRouting", "ObjectRelocationForward", "ObjectRelocationBackward",
            "RamInsertion", "UsbInsertion", "PegInsertionTwin", "ObjectRelocationTwin"} <= set(names)
    assert get_task("RamInsertion").robot == "fr3"


def test_dual_fr3_launch_gives_each_arm_a_server_in_its_namespace_on_its_port():
    tyro = pytest.importorskip("tyro")
    from robot_servers.overrides import parse_overrides
    from serl.cli.serve import ServeCommand

    tree = ast.parse((LAUNCH / "dual_fr3_crisp.launch.py").read_text())
    constants: dict = {}
    keep = [n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id in ("ARMS", "PER_ARM", "SHARED")]
    exec(compile(ast.Module(body=keep, type_ignores=[]), "dual_fr3_crisp.launch.py", "exec"), constants)
    ns = load_server_command()
    # the include passes robot_server.launch.py only arguments it declares
    assert set(constants["SHARED"]) | set(constants["PER_ARM"]) | {"namespace"} <= set(ns["ARGUMENTS"])
    ports = set()
    for index, arm in enumerate(constants["ARMS"]):
        values = {name: default for name, (default, _) in ns["ARGUMENTS"].items()}
        values.update({name: default for name, (default, _) in constants["SHARED"].items()})
        values.update({name: defaults[index] for name, defaults in constants["PER_ARM"].items()})
        values.update(namespace=arm, task="PegInsertion")
        config = tyro.cli(ServeCommand, args=ns["server_command"](values)[3:])
        assert parse_overrides(config.option, "--option")["namespace"] == arm
        ports.add(config.port)
    assert ports == {5000, 5001}
