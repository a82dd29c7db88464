"""Opening episode files and making renames durable; shared by the journal, the writer and the reader."""

from __future__ import annotations

import os
import time

import h5py


def open_h5(path: str, mode: str, attempts: int = 50) -> h5py.File:
    """Open, retrying briefly while another process (a viewer) holds the HDF5 file lock."""
    for attempt in range(attempts):
        try:
            return h5py.File(path, mode)
        except (OSError, BlockingIOError) as err:
            if "lock" not in str(err).lower() or attempt == attempts - 1:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")


def fsync_dir(path: str) -> None:
    """Flush the directory entry of ``path`` (after a rename or unlink) to disk."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
