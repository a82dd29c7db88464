"""Child processes that tests and benchmarks run beside the code under test: simulators, twin nodes, robot servers.

Each runs in its own process so that a crash there cannot take the caller down.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate ``process``; kill it if it has not exited within ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def running_until_ready(command: Sequence[str], what: str, timeout: float = 30.0) -> Iterator[subprocess.Popen]:
    """Start ``command``; wait until it prints a line starting with ``READY``; stop it on exit."""
    process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout
        lines = []
        while True:
            line = process.stdout.readline()
            if line.startswith("READY"):
                break
            lines.append(line)
            if not line and process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start: {''.join(lines)[-2000:]}")
        # keep draining its output so a chatty child never blocks on a full pipe
        threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
        yield process
    finally:
        stop_process(process)


ROBOT_SERVER_COMMAND = (sys.executable, "-m", "robot_servers")


def start_robot_server(args: Sequence[str], command: Sequence[str] = ROBOT_SERVER_COMMAND,
                       timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
    """Start ``COMMAND ARGS`` (``python -m robot_servers`` by default; ``serl serve`` for a task) on a free
    loopback port; return (process, url) once /health answers."""
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([*command, *args, "--port", str(port), "--log-level", "error"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"robot server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            httpx.get(url + "/health", timeout=1.0).raise_for_status()
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    stop_process(proc)
    raise RuntimeError(f"robot server did not start within {timeout:g} s")
