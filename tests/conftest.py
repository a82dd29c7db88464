"""Shared pytest setup."""

import os
import signal

import pytest


def pytest_sessionstart(session):
    """Give SIGINT back its default handler when pytest was started with it ignored (``cmd &`` in a script).

    An ignored SIGINT is inherited by every child process, and the tests that press Ctrl-C on a recorder or
    writer child would then see it do nothing; a handled one is reset to the default in children.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


REALTIME_MARKERS = ("ros2", "franka", "realtime_twin")  # tests whose simulators keep a wall-clock control rate
BATCH_NICENESS = 10


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Under ``-n``, a simulator that keeps a real-time clock (the ROS 2 twin node, franky-sim) must not starve
    behind the other worker's training processes: every other test, and what it starts, runs at a lower CPU
    priority. Set before the test's fixtures start their processes, which inherit it. Raising the priority
    again needs root (as in CI); without it the tests simply share the CPU evenly."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    realtime = any(item.get_closest_marker(marker) for marker in REALTIME_MARKERS)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 0 if realtime else BATCH_NICENESS)
    except PermissionError:
        pass


def pytest_collection_modifyitems(config, items):
    """Under ``-n``, the real-time tests run on one worker, one after another: DDS domains are machine-wide, and
    two 1 kHz simulators at once would compete for the same cores. Tests that share a module- or class-scoped
    fixture (a trained classifier, a running simulator) run on one worker too, so it is built once."""
    for item in items:
        if any(item.get_closest_marker(marker) for marker in REALTIME_MARKERS):
            item.add_marker(pytest.mark.xdist_group("realtime"))
        elif any(definition.scope in ("module", "class") for definitions in item._fixtureinfo.name2fixturedefs.values()
                 for definition in definitions):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """One XLA cache for every process the tests start, on every worker: most compile the same small agents.

    It lives under the run's temporary folder (pytest keeps the last three), never in ``~/.cache``.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the workers' folders share this parent
    previous = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(base / "jax-cache")
    yield
    if previous is None:
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    else:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = previous


_EXIT_STATUS: list[int] = []


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the process with the tests' status once pytest is done, skipping interpreter teardown.

    This one process hosts DDS participants, MuJoCo's EGL contexts, XLA and uvicorn threads; their native
    exit handlers, run in whatever order teardown reaches them, crashed it now and then after every test had
    passed. Each command the tests start as a subprocess still exits normally and has its status checked.
    """
    if _EXIT_STATUS:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])
