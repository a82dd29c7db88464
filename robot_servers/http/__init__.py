"""The robot server's HTTP API (``create_app``) and its request schemas."""

from robot_servers.http.app import ServerConfig, create_app
from robot_servers.http.middleware import SESSION_HEADER

__all__ = ["ServerConfig", "create_app", "SESSION_HEADER"]
