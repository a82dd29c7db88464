"""Actor–learner runtime: the learner and actor processes behind ``serl train|learner|actor|eval``."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Callable, TypeVar

Result = TypeVar("Result")


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> Path | None:
    """Keep XLA compilations on disk so a restarted learner or actor starts in seconds, not tens of seconds.

    ``$JAX_COMPILATION_CACHE_DIR`` wins, then ``directory``, then ``~/.cache/serl/jax``; ``SERL_JAX_CACHE=0``
    turns it off.
    """
    if os.environ.get("SERL_JAX_CACHE", "1") == "0":
        return None
    import jax

    path = Path(os.environ.get("JAX_COMPILATION_CACHE_DIR") or directory or Path.home() / ".cache" / "serl" / "jax")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def run_until_signalled(run: Callable[[threading.Event], Result]) -> Result:
    """``run(stop)`` with the compilation cache on; SIGINT/SIGTERM set ``stop`` so the process ends cleanly."""
    enable_compilation_cache()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return run(stop)
