"""``serl keys DIR --actors NAME ...``: CURVE keys for a learner listening beyond loopback (docs/learner_security.md).

Creates the learner's key pair once (later calls reuse it and only add actors), one key pair per actor, and
authorises each actor with the learner. Secret keys are written with mode 0600, their folders 0700.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import tyro

from serl.transport.security import AUTHORIZED, LEARNER, generate_keys


@dataclasses.dataclass(frozen=True)
class KeysCommand:
    """Make CURVE keys: DIR/learner for the learner, DIR/NAME for each actor."""

    directory: Annotated[Path, tyro.conf.Positional]
    """Folder for the keys (created if missing); one subfolder per machine."""
    actors: tuple[str, ...] = ("actor-0",)
    """Names of the actors to create keys for and authorise (new names only; the learner's pair is reused)."""


def keys(cmd: KeysCommand) -> int:
    learner_existed = (cmd.directory / LEARNER / f"{LEARNER}.key_secret").is_file()
    generate_keys(cmd.directory, cmd.actors)
    learner_dir = cmd.directory / LEARNER
    print(f"{'reused' if learner_existed else 'created'} the learner's keys in {learner_dir}; "
          f"authorised {', '.join(cmd.actors)} in {learner_dir / AUTHORIZED}")
    print(f"learner machine:  serl learner ... --net.host 0.0.0.0 --net.keys {learner_dir}")
    for name in cmd.actors:
        print(f"actor {name}: copy {cmd.directory / name} to it, then  serl actor ... --net.keys <that folder>")
    if learner_existed:
        print("restart the learner: it reads its authorised keys when it starts")
    return 0
