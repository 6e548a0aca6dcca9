"""Items 6 and 11: the table of bad inputs in examples/benchmarks/bench_faults.py, API and CLI, each named."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "benchmarks" / "bench_faults.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_faults", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_faults"] = module
    spec.loader.exec_module(module)
    return module


def test_at_least_100_bad_inputs_each_fail_with_a_named_error():
    bench = _bench()
    tally = bench.Tally()
    bench.bad_inputs(tally)
    assert tally.failures == []
    assert tally.bad_api >= 50 and tally.bad_cli >= 50
    assert tally.bad_named == tally.bad_api + tally.bad_cli >= 100
