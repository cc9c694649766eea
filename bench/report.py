"""Writes benchmark results into ``docs/benchmarks.md`` between generated-section markers.

The hand-written text stays as it is. ``<!-- bench:run -->`` ... ``<!-- /bench:run -->``
gets the last run's facts; each scenario owns ``<!-- bench:scenario:NAME -->`` ...
``<!-- /bench:scenario:NAME -->``, replaced only when that scenario ran, so a partial run
(``SCENARIOS=api``) leaves the other scenarios' last numbers in place. A scenario with
no section yet gets one (under its module's ``TITLE``) before ``<!-- /bench:results -->``.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.harness import BenchResult, format_number

RESULTS_END = "<!-- /bench:results -->"


def _number(value: float | None) -> str:
    return format_number(value, missing="–")


def results_table(results: list[BenchResult]) -> str:
    rows = ["| result | value | baseline | ratio | target | status |", "|---|---:|---:|---:|---|---|"]
    for r in results:
        rows.append(
            f"| `{r.scenario}` | {_number(r.value)} {r.unit} | {_number(r.baseline)} | "
            f"{'–' if r.ratio is None else f'{r.ratio:.2f}'} | {r.target or 'none (reported)'} | "
            f"{'PASS' if r.passed else '**FAIL**'} |"
        )
        if "error" in r.details:
            rows.append(f"| | error: `{r.details['error'][:300]}` | | | | |")
    return "\n".join(rows)


def run_section(record: dict[str, Any]) -> str:
    m = record["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    return (
        f"Last run: **{record['mode']}**, {record['started_at']}, {record['total_seconds']} s, scenarios "
        f"{', '.join(record['scenarios'])}. Machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"load average at start {', '.join(map(str, m['load_average_at_start']))}; Python {m['python']}, "
        f"PostgreSQL {m['postgresql']}, Redis {m['redis']}, {m['wrk'] or 'no wrk (Python load client)'}; {packages}."
    )


def scenario_section(name: str, record: dict[str, Any], module: ModuleType | None, results: list[BenchResult]) -> str:
    text = f"Measured {record['started_at']} ({record['mode']} run).\n\n" + results_table(results) + "\n"
    extra = getattr(module, "markdown", None)
    if extra is not None:
        try:
            rendered = extra(results)
        except Exception as exc:  # noqa: BLE001 - the table above still stands
            rendered = f"(could not render the details: {type(exc).__name__}: {exc})"
        if rendered:
            text += "\n" + rendered.strip() + "\n"
    return text


def _replace_block(doc: str, tag: str, body: str, *, heading: str) -> str:
    start, end = f"<!-- bench:{tag} -->", f"<!-- /bench:{tag} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(doc):
        return pattern.sub(lambda _: block, doc, count=1)
    insertion = f"{heading}\n\n{block}\n\n"
    if RESULTS_END in doc:
        return doc.replace(RESULTS_END, insertion + RESULTS_END, 1)
    return doc.rstrip() + "\n\n" + insertion


def update_benchmarks_doc(path: Path, record: dict[str, Any],
                          outputs: dict[str, tuple[ModuleType | None, list[BenchResult]]]) -> None:
    doc = path.read_text() if path.exists() else "# Benchmarks\n\n<!-- bench:results -->\n" + RESULTS_END + "\n"
    doc = _replace_block(doc, "run", run_section(record), heading="## Last run")
    for name, (module, results) in outputs.items():
        title = getattr(module, "TITLE", name.replace("_", " ").capitalize())
        doc = _replace_block(doc, f"scenario:{name}", scenario_section(name, record, module, results),
                             heading=f"### {title}")
    path.write_text(doc)
