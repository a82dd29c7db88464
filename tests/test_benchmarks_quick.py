"""Every benchmark script runs in --quick smoke mode and prints one JSON object."""

import json
import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = sorted((pathlib.Path(__file__).parent.parent / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.stem)
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
