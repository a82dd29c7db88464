"""``python -m robot_servers --backend twin --port 5000 [--host 0.0.0.0] [--token T]``.

The robot side knows no tasks: ``serl serve --task NAME`` adds a task's safety box, cameras and scene.
"""

import tyro

from robot_servers.serve import ServeConfig, serve


def main() -> None:
    serve(tyro.cli(ServeConfig, description="Serve one robot backend and its cameras over HTTP."))


if __name__ == "__main__":
    main()
