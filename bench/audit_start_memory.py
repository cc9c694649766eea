"""Peak memory and time of starting an audit run whose start writes many findings.

The start of a run (:func:`models.audit_runs.start_run`) writes its run-level findings
(a digest's, chains whose row is gone, certificates') and signs them in its plan
(:func:`models.audit_record.sign_plan`). This builds, on its own embedded stack, a registry
where every chain's row is gone (versions COPYed in under ids no row has: one
``entity-row-missing`` finding each at a full run's start, the cheapest real way to many
start findings; a digest handed to the API lists at most 5,000 leaves), growing it to each
of ``--sizes``. At each size it starts a full run ``--runs`` times, each in a fresh process
(so one measurement's heap is not the next one's), rolled back. Each prints the process's
RSS before the start (imports made, connected) and its peak during it (``VmHWM``, reset
first through ``/proc/self/clear_refs``), and the wall time.

    python -m bench.audit_start_memory --sizes 50000,200000 --runs 3
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import statistics
import time
import uuid
from pathlib import Path

import psycopg
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bench.audit_close_memory import _status_kb
from bench.audit_data import VERSION_COLUMNS, Slice, _copy_text, _rows
from bench.harness import BenchStack, measured_in_a_child
from models.settings import Settings, libpq_url


def measure() -> dict[str, float]:
    """Start a full run once in this process, rolled back; its RSS before, peak during, and seconds."""
    from models.audit_runs import MAX_UUID, start_run
    from models.audit_tables import AuditFinding, AuditRun
    from models.db import make_engine
    from models.embeddings import HashingEmbedder
    from models.job_lifecycle import create_job
    from models.keys import keyring_from_settings
    from models.settings import load_settings

    settings = load_settings()
    engine, keyring = make_engine(settings), keyring_from_settings(settings)
    with Session(engine) as session:
        session.execute(select(AuditRun.id).limit(1))  # connected, mapped
        job = create_job(session, kind="audit.run", params={}, queue="audit")
        session.flush()
        before = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from now
        started = time.perf_counter()
        run = start_run(session, job_id=job.id, params={}, keyring=keyring, embedder=HashingEmbedder(),
                        chunk_entities=MAX_UUID)
        seconds = time.perf_counter() - started
        peak = _status_kb("VmHWM")
        written = session.scalar(select(func.count()).where(AuditFinding.run_id == run.id))
        signed = run.plan_signed["findings"]["count"]
        session.rollback()
    return {"rss_before_mb": before / 1024, "peak_mb": peak / 1024, "seconds": seconds, "findings": written,
            "signed": signed}


def _load_rowless(part: Slice) -> int:
    """COPY ``part``'s chains' versions alone: no row holds them."""
    versions = io.StringIO()
    for _, rows in _rows(part):
        for row in rows:
            versions.write("\t".join(_copy_text(v) for v in row) + "\n")
    with psycopg.connect(libpq_url(part.settings.database_url)) as conn, conn.cursor() as cursor:
        with cursor.copy(f"COPY entity_versions {VERSION_COLUMNS} FROM STDIN") as copy:
            copy.write(versions.getvalue())
    return part.count


def grow(settings: Settings, *, start: int, to: int) -> None:
    size = 5_000
    steward = uuid.uuid4()
    parts = [Slice(settings, s, min(size, to - s), 1, steward) for s in range(start, to, size)]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_load_rowless, parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50000,200000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure()))
        return
    with BenchStack() as stack:
        settings = stack.fresh_database("bench_start_memory")
        env = stack.child_env(settings, {"PYTHONPATH": os.getcwd()})
        loaded = 0
        for size in (int(s) for s in args.sizes.split(",")):
            grow(settings, start=loaded, to=size)
            loaded = size
            stack.settle(settings)
            runs = [measured_in_a_child("bench.audit_start_memory", env) for _ in range(args.runs)]
            print(_line(size, runs), flush=True)


def _line(size: int, runs: list[dict[str, float]]) -> str:
    peaks, seconds = [r["peak_mb"] for r in runs], [r["seconds"] for r in runs]
    peak, before = statistics.median(peaks), statistics.median(r["rss_before_mb"] for r in runs)
    counted = {(r.get("findings"), r.get("signed")) for r in runs}
    return (f"start {size} rowless chains (findings written, signed: {counted}): peak RSS {peak:.0f} MB "
            f"(before {before:.0f} MB, +{peak - before:.0f}), {statistics.median(seconds):.2f} s "
            f"(peaks {', '.join(f'{p:.0f}' for p in peaks)} MB; {', '.join(f'{s:.2f}' for s in seconds)} s)")


if __name__ == "__main__":
    main()
