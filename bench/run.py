"""Run the benchmarks: ``python -m bench.run [--quick] [--scenarios pipeline,api]``.

Every module in ``bench/scenarios/`` that has ``run(stack, quick)`` is a scenario; they
run in :data:`ORDER` (then any others alphabetically) on one :class:`BenchStack`. A
scenario that raises (or fails to import) is recorded as a FAIL with its error and the
others still run. Results go to ``bench/results/<timestamp>.json`` and into the
generated sections of ``docs/benchmarks.md``. Exit status 1 when any result FAILs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import pkgutil
import sys
import time
import traceback
from dataclasses import asdict
from types import ModuleType
from typing import Any

from bench import scenarios
from bench.harness import REPO_ROOT, BenchResult, BenchStack
from bench.machine import machine_facts
from bench.report import update_benchmarks_doc

ORDER = ["pipeline", "api", "chain_writes", "audit", "bulk_assignment"]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
DOC = REPO_ROOT / "docs" / "benchmarks.md"


def available_scenarios() -> list[str]:
    names = [m.name for m in pkgutil.iter_modules(scenarios.__path__) if not m.name.startswith("_")]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def run_scenario(name: str, stack: BenchStack, quick: bool) -> tuple[ModuleType | None, list[BenchResult], float]:
    started = time.monotonic()
    module = None
    try:
        module = importlib.import_module(f"bench.scenarios.{name}")
        results = list(module.run(stack, quick))
        if not results:
            raise RuntimeError("the scenario returned no results")
    except Exception as exc:  # noqa: BLE001 - one broken scenario must not stop the others
        results = [BenchResult.crashed(name, exc, traceback.format_exc())]
        print(traceback.format_exc(), file=sys.stderr, flush=True)
    return module, results, round(time.monotonic() - started, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run Plant's benchmarks on an embedded stack.")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and shorter runs (~2-3 minutes)")
    parser.add_argument("--scenarios", default="", help="comma-separated subset, e.g. pipeline,api")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    known = available_scenarios()
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()] or known
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; available: {', '.join(known)}")
    mode = "quick" if args.quick else "full"
    stamp = dt.datetime.now(dt.UTC)
    print(f"bench: {mode} run of {', '.join(chosen)}", flush=True)
    record: dict[str, Any] = {"started_at": stamp.isoformat(timespec="seconds"), "mode": mode, "scenarios": {}}
    outputs: dict[str, tuple[ModuleType | None, list[BenchResult]]] = {}
    with BenchStack() as stack:
        record["machine"] = machine_facts(stack)
        for name in chosen:
            print(f"== {name}", flush=True)
            module, results, seconds = run_scenario(name, stack, args.quick)
            outputs[name] = (module, results)
            record["scenarios"][name] = {"seconds": seconds, "results": [asdict(r) for r in results]}
            for result in results:
                print(result.line(), flush=True)
    record["total_seconds"] = round((dt.datetime.now(dt.UTC) - stamp).total_seconds(), 1)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{stamp:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"bench: results in {path.relative_to(REPO_ROOT)} ({record['total_seconds']} s)", flush=True)
    if not args.no_doc:
        update_benchmarks_doc(DOC, record, outputs)
        print(f"bench: updated {DOC.relative_to(REPO_ROOT)}", flush=True)
    return 0 if all(r.passed for _, results in outputs.values() for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
