"""``python -m examples.serve --backend ros2 --task PegInsertion ...``: the robot server
(same flags as ``serl serve``) with the example tasks registered. Run from the repository root."""

import tyro

from examples.registry import register_examples
from serl.cli.serve import ServeCommand, serve


def main() -> None:
    register_examples()
    serve(tyro.cli(ServeCommand, description="Serve one robot backend with the example tasks registered."))


if __name__ == "__main__":
    main()
