"""``serl bench``: run benchmark scripts (``benchmarks/<name>.py``) and collect their JSON reports."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Run benchmarks/*.py (all, or the named ones) and print one JSON object keyed by benchmark."""

    names: tuple[str, ...] = ()
    """Benchmark names (file stems); empty = all."""
    quick: bool = True
    """Smoke mode (--quick): seconds each, no peer venvs. --no-quick runs the full measurements."""
    directory: Path = Path("benchmarks")
    timeout: float = 3600.0


def bench(cfg: BenchConfig) -> int:
    if not cfg.directory.is_dir():
        print(f"directory: {cfg.directory} not found (run from the repository root or pass --directory)", file=sys.stderr)
        return 2
    available = {p.stem: p for p in sorted(cfg.directory.glob("*.py"))}
    unknown = [n for n in cfg.names if n not in available]
    if unknown:
        print(f"names: unknown benchmarks {unknown}; available: {sorted(available)}", file=sys.stderr)
        return 2
    reports, failed = {}, []
    for name in cfg.names or tuple(available):
        args = [sys.executable, str(available[name])] + (["--quick"] if cfg.quick else [])
        result = subprocess.run(args, capture_output=True, text=True, timeout=cfg.timeout)
        lines = result.stdout.strip().splitlines()
        try:
            reports[name] = json.loads(lines[-1]) if lines else {}
        except json.JSONDecodeError:
            reports[name] = {"error": "no JSON report", "stdout_tail": result.stdout[-500:]}
        if result.returncode != 0:
            failed.append(name)
            reports[name] = {"error": f"exit code {result.returncode}", "stderr_tail": result.stderr[-1000:]}
    print(json.dumps(reports, indent=2))
    return 1 if failed else 0
