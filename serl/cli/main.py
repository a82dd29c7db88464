"""The ``serl`` command: one subcommand per tool, each parsed by tyro from a typed frozen dataclass.

Subcommands import their module only when chosen, so ``serl serve`` never loads JAX and ``serl --help``
is instant.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

# name -> (module, config class, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "train": ("serl.cli.train", "TrainConfig", "train", "learner + actor (+ twin server) on this machine, one progress display"),
    "learner": ("serl.cli.train", "LearnerCommand", "learner", "the learner process (replay buffers, SAC updates, checkpoints)"),
    "actor": ("serl.cli.train", "ActorCommand", "actor", "the actor process (env, policy, streams transitions)"),
    "serve": ("serl.cli.serve", "ServeCommand", "serve", "the robot server (twin or real arm) over HTTP"),
    "eval": ("serl.cli.eval", "EvalConfig", "evaluate", "run a checkpoint's deterministic policy for N episodes"),
    "record-demos": ("serl.cli.record_demos", "RecordDemosConfig", "record_demos", "record demos (scripted or teleop) to HDF5"),
    "demos": ("serl.cli.demo_view", "DemoViewConfig", "demo_view", "summarise / plot / render a demo file"),
    "summary": ("serl.cli.summary", "SummaryConfig", "summary", "a run's learning curves as RUN_DIR/summary.png"),
    "bench": ("serl.cli.bench", "BenchConfig", "bench", "run benchmarks/*.py (--quick for the CI smoke mode)"),
    "keys": ("serl.cli.keys", "KeysCommand", "keys", "CURVE keys for a learner and its actors on other machines"),
    "classifier": ("reward_classifiers.cli", "", "main", "reward classifiers: label | train | eval"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: serl <command> [options] [--debug]   (serl <command> --help for its options; --debug shows "
             "tracebacks)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, _, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"serl: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, config_name, function_name, _ = COMMANDS[name]
    if name == "demos" and rest[:1] == ["view"]:
        rest = rest[1:]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            print(f"serl {name}: not available in this install ({module_name} is missing)", file=sys.stderr)
            return 2
        raise
    function = getattr(module, function_name)
    try:
        if not config_name:
            result = function(rest)
        else:
            import tyro

            config = tyro.cli(getattr(module, config_name), args=rest, prog=f"serl {name}")
            result = function(config)
    except (FileNotFoundError, ValueError) as err:
        if debug:
            raise
        print(f"serl {name}: {err}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
