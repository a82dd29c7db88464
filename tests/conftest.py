"""Shared pytest setup."""

import signal


def pytest_sessionstart(session):
    """Give SIGINT back its default handler when pytest was started with it ignored (``cmd &`` in a script).

    An ignored SIGINT is inherited by every child process, and the tests that press Ctrl-C on a recorder or
    writer child would then see it do nothing; a handled one is reset to the default in children.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
