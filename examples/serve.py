"""``python -m examples.serve --backend ros2 --task PegInsertion ...``: the robot server
(same flags as ``python -m robot_servers``) with the example tasks registered. Run from the repository root."""

import tyro

from examples.registry import register_examples
from robot_servers.server import ServeConfig, serve


def main() -> None:
    register_examples()
    serve(tyro.cli(ServeConfig, description="Serve one robot backend with the example tasks registered."))


if __name__ == "__main__":
    main()
