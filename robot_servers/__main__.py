"""``python -m robot_servers --backend twin --task PandaPickCube --port 5000 [--host 0.0.0.0] [--token T]``."""

import tyro

from robot_servers.server import ServeConfig, serve


def main() -> None:
    serve(tyro.cli(ServeConfig, description="Serve one robot backend and its cameras over HTTP."))


if __name__ == "__main__":
    main()
