"""Every benchmark script runs in --quick smoke mode and prints one JSON object."""

import json
import pathlib
import subprocess
import sys

import pytest

REAL_TIME = {"dual_arm"}  # two twins at a wall-clock 1 kHz: run beside no other real-time simulator
BENCHMARKS = [pytest.param(path, marks=[pytest.mark.realtime_twin] if path.stem in REAL_TIME else [], id=path.stem)
              for path in sorted((pathlib.Path(__file__).parent.parent / "benchmarks").glob("*.py"))]


@pytest.mark.parametrize("script", BENCHMARKS)
def test_benchmark_quick_prints_one_json_object(script, tmp_path):
    result = subprocess.run(
        [sys.executable, str(script), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert result.returncode == 0, f"{script.name} --quick failed:\n{result.stderr[-3000:]}"
    output = result.stdout.strip()
    try:
        report = json.loads(output)
    except json.JSONDecodeError:  # progress lines before a one-line JSON report
        report = json.loads(output.splitlines()[-1])
    assert isinstance(report, dict) and report, f"{script.name} printed no figures"
