"""Entry of the child processes ``serl train`` starts: ``python -m serl.runtime.launch learner|actor CONFIG.json RUN_DIR``.

The config file holds the resolved config (JSON), so the child runs exactly what the parent wrote down.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from serl.runtime import actor as actor_process
from serl.runtime import learner as learner_process
from serl.runtime.config import ActorConfig, LearnerConfig, from_dict


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] not in ("learner", "actor"):
        print("usage: python -m serl.runtime.launch learner|actor CONFIG.json RUN_DIR", file=sys.stderr)
        return 2
    kind, config_path, run_dir = argv
    data = json.loads(Path(config_path).read_text())
    try:
        if kind == "learner":
            learner_process.main_with_signals(from_dict(LearnerConfig, data), Path(run_dir))
        else:
            actor_process.main_with_signals(from_dict(ActorConfig, data), Path(run_dir))
    except ValueError as err:  # a setup error (a refused handshake, a bad option): one line, as `serl` prints it
        print(f"[{kind}] {err}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
