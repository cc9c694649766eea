"""Peak memory and time of an incremental audit run in which every entity fails the digest.

An incremental run (``since: latest-digest``) is audited inline at its start
(:func:`models.audit_runs.start_run`). This builds, on its own embedded stack, a registry of
industries (one signed version each, :mod:`bench.audit_data`) grown to each of ``--sizes``,
and stores a digest of it. At each size it starts an incremental run ``--runs`` times, each
in a fresh process (so one measurement's heap is not the next one's), after marking every
industry's row deleted through SQL in the same transaction (each is then examined, and is
a ``row-content-mismatch``: the digest held it live and no signed version records the
deletion), all rolled back. Each prints the process's RSS before the start (imports made,
connected, rows marked) and its peak during it (``VmHWM``, reset first through
``/proc/self/clear_refs``), the wall time, and the CPU time of the process (PostgreSQL's is not
in it; on a shared machine it varies less than the wall time).

    python -m bench.incremental_audit_memory --sizes 20000,80000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from bench.audit_close_memory import _status_kb
from bench.audit_data import generate
from bench.harness import BenchStack, measured_in_a_child


def measure() -> dict[str, float]:
    """Start an incremental run once in this process, every row marked deleted first, rolled
    back; its RSS before, peak during, and seconds."""
    from models.audit_runs import MAX_UUID, start_run
    from models.audit_tables import AuditFinding, AuditRun
    from models.db import make_engine
    from models.embeddings import HashingEmbedder
    from models.job_lifecycle import create_job
    from models.keys import keyring_from_settings
    from models.settings import load_settings

    settings = load_settings()
    engine, keyring = make_engine(settings), keyring_from_settings(settings)
    params = {"since": "latest-digest"}
    with Session(engine) as session:
        session.execute(select(AuditRun.id).limit(1))  # connected, mapped
        marked = session.execute(text("UPDATE industries SET deleted_at = now() WHERE deleted_at IS NULL")).rowcount
        job = create_job(session, kind="audit.run", params=params, queue="audit")
        session.flush()
        before = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from now
        started, cpu = time.perf_counter(), time.process_time()
        run = start_run(session, job_id=job.id, params=params, keyring=keyring, embedder=HashingEmbedder(),
                        chunk_entities=MAX_UUID)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        peak = _status_kb("VmHWM")
        written = session.scalar(select(func.count()).where(AuditFinding.run_id == run.id))
        signed = run.plan_signed["findings"]["count"]
        examined = run.entities_total
        session.rollback()
    return {"rss_before_mb": before / 1024, "peak_mb": peak / 1024, "seconds": seconds, "cpu_seconds": cpu, "findings": written,
            "signed": signed, "examined": examined, "marked": marked}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="20000,80000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure()))
        return
    from models.keys import keyring_from_settings
    from models.ledger_store import store_digest
    from models.seed import bootstrap_steward

    with BenchStack() as stack:
        settings = stack.fresh_database("bench_incremental_memory")
        env = stack.child_env(settings, {"PYTHONPATH": os.getcwd()})
        keyring = keyring_from_settings(settings)
        with stack.session(settings) as session:
            steward = bootstrap_steward(session, stack.write_context)
        loaded = 0
        for size in (int(s) for s in args.sizes.split(",")):
            generate(settings, entities=size - loaded, versions=1, steward=steward, start=loaded)
            loaded = size
            with stack.session(settings) as session:
                store_digest(session, keyring=keyring)  # the entities added since the last one checked
            stack.settle(settings)
            runs = [measured_in_a_child("bench.incremental_audit_memory", env, keys=("rss_before_mb", "peak_mb", "seconds", "cpu_seconds")) for _ in range(args.runs)]
            print(_line(size, runs), flush=True)


def _line(size: int, runs: list[dict[str, float]]) -> str:
    peaks, seconds = [r["peak_mb"] for r in runs], [r["seconds"] for r in runs]
    peak, before = statistics.median(peaks), statistics.median(r["rss_before_mb"] for r in runs)
    counted = {(r.get("marked"), r.get("examined"), r.get("findings"), r.get("signed")) for r in runs}
    return (f"incremental run, {size} industries (marked, examined, findings written, signed: {counted}): "
            f"peak RSS {peak:.0f} MB (before {before:.0f} MB, +{peak - before:.0f}), {statistics.median(seconds):.2f} s, "
            f"{statistics.median(r['cpu_seconds'] for r in runs):.2f} s of this process's CPU "
            f"(peaks {', '.join(f'{p:.0f}' for p in peaks)} MB; {', '.join(f'{s:.2f}' for s in seconds)} s)")


if __name__ == "__main__":
    main()
