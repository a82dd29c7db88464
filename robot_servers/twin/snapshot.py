"""Save one PNG per twin camera so a person can see the scene.

    python -m robot_servers.twin.snapshot --out snapshots/ [--scene peg_insertion --robot fr3 --height 480 --width 640]
    python -m robot_servers.twin.snapshot --out snapshots/ --visual meshes   # FR3 visual meshes (needs franky-sim)
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import tyro


@dataclasses.dataclass(frozen=True)
class SnapshotArgs:
    out: pathlib.Path  # folder for <camera>.png
    robot: str = "panda"  # panda | fr3
    scene: str = "pick_cube"  # empty | pick_cube | peg_insertion
    height: int = 480
    width: int = 640
    seed: int = 0
    settle: float = 0.5  # seconds of physics before the pictures
    visual: str = "primitives"  # primitives | meshes (FR3 meshes from franky-sim)


def snapshot(args: SnapshotArgs) -> dict[str, str]:
    """Render every camera of a freshly reset twin; returns camera name → written path."""
    import imageio.v3 as iio

    from robot_servers.backends.twin import TwinBackend, TwinConfig

    args.out.mkdir(parents=True, exist_ok=True)
    config = TwinConfig(robot=args.robot, scene=args.scene, image_size=(args.height, args.width), seed=args.seed,
                        visual=args.visual)
    written = {}
    with TwinBackend(config) as backend:
        backend.advance(args.settle)
        for name, camera in backend.cameras().items():
            frame, _ = camera.read()
            path = args.out / f"{name}.png"
            iio.imwrite(path, frame)
            written[name] = str(path)
    return written


def main() -> None:
    print(json.dumps(snapshot(tyro.cli(SnapshotArgs))))


if __name__ == "__main__":
    main()
