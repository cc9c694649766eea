"""Peak memory and time of closing, exporting and showing an audit run with many findings.

A deployment where every entity has a finding (a key compromise, mass tampering) must still
close its audit on a worker with a memory limit. This builds one running run on its own
embedded stack and writes its findings as Plant's chunks do (a signed checkpoint step per
batch of ``--batch``, the chunks taking turns), growing it to each of ``--sizes``. At each
size it measures, ``--runs`` times each, in a fresh process (so one measurement's heap is not
the next one's):

- ``close``: :func:`models.audit_close.summarize_run`, rolled back (the run stays running);
- ``export``: the running run's JSON export (:func:`models.reports.export_report`);
- ``page``: the running run's report page (:func:`models.report_view.report_view`).

Each prints the process's RSS before the work (imports made, connected) and its peak during
it (``VmHWM``, reset first through ``/proc/self/clear_refs``), and the wall time.

    python -m bench.audit_close_memory --sizes 50000,100000,200000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from pathlib import Path

from sqlalchemy.orm import Session

from bench.harness import BenchStack, measured_in_a_child
from models.audit import FindingRow
from models.audit_record import record_step, sign_checkpoint
from models.audit_runs import MAX_UUID, insert_findings, start_run
from models.audit_tables import AuditChunk, AuditRun
from models.embeddings import HashingEmbedder
from models.job_lifecycle import create_job
from models.keys import keyring_from_settings

WORKS = ("close", "export", "page")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(work: str, run_id: uuid.UUID) -> dict[str, float]:
    """Run ``work`` once on ``run_id`` in this process; its RSS before, peak during, and seconds."""
    from models.audit_close import summarize_run
    from models.db import make_engine
    from models.report_view import report_view
    from models.reports import export_report
    from models.settings import load_settings

    settings = load_settings()
    engine, keyring = make_engine(settings), keyring_from_settings(settings)
    with Session(engine) as session:
        session.get(AuditRun, run_id)  # connected, mapped
        session.rollback()
        before = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from now
        started = time.perf_counter()
        counted = None
        if work == "close":
            counted = summarize_run(session, run_id=run_id, keyring=keyring)["findings"]
        elif work == "export":
            export_report(session, run_id=run_id, keyring=keyring)
        else:
            report_view(session, run_id=run_id, keyring=keyring)
        seconds = time.perf_counter() - started
        peak = _status_kb("VmHWM")
        session.rollback()
    return {"rss_before_mb": before / 1024, "peak_mb": peak / 1024, "seconds": seconds, "findings": counted}


class Registry:
    """One running run whose chunks write findings as Plant's batches do."""

    def __init__(self, session: Session, keyring: object) -> None:
        self.session, self.keyring = session, keyring
        job = create_job(session, kind="audit.run", params={}, queue="audit")
        self.run = start_run(session, job_id=job.id, params={}, keyring=keyring, embedder=HashingEmbedder(),
                             chunk_entities=MAX_UUID)
        self.chunks = sorted(self.run_chunks(), key=lambda c: c.chunk_no)
        self.written = 0
        session.commit()

    def run_chunks(self) -> list[AuditChunk]:
        return list(self.session.query(AuditChunk).filter_by(run_id=self.run.id))

    def grow(self, to: int, batch: int) -> None:
        """Write findings until the run has ``to``, a batch per checkpoint step; every chunk
        is done, its last checkpoint signed so, at the end."""
        steps = 0
        while self.written < to:
            chunk = self.chunks[steps % len(self.chunks)]
            count = min(batch, to - self.written)
            rows = [FindingRow("industry", uuid.uuid4(), 3, "chain-broken",
                               f"version 3's link hash does not match its content and the version before it "
                               f"(finding {self.written + n} of the bench)") for n in range(count)]
            self._step(chunk, rows)
            self.written += count
            steps += 1
            if steps % 20 == 0:
                self.session.commit()
        for chunk in self.chunks:
            chunk.done = True
            self._step(chunk, [])
        self.session.commit()

    def _step(self, chunk: AuditChunk, rows: list[FindingRow]) -> None:
        counters = dict(chunk.counters or {})
        counters["entities"] = counters.get("entities", 0) + len(rows)
        counters["versions_verified"] = counters.get("versions_verified", 0) + 5 * len(rows)
        chunk.counters = counters
        step = record_step(self.session, self.run, chunk)
        written = insert_findings(self.session, self.run.id, rows, chunk_id=chunk.id, step=step)
        sign_checkpoint(self.run, chunk, self.keyring, step=step, findings=written)
        self.session.flush()
        for finding in written:
            self.session.expunge(finding)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50000,100000,200000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--works", default=",".join(WORKS))
    parser.add_argument("--measure", choices=WORKS, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=uuid.UUID, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.run)))
        return
    with BenchStack() as stack:
        settings = stack.fresh_database("bench_close_memory")
        env = stack.child_env(settings, {"PYTHONPATH": os.getcwd()})
        with Session(stack.engine(settings), expire_on_commit=False) as session:
            registry = Registry(session, keyring_from_settings(settings))
            for size in (int(s) for s in args.sizes.split(",")):
                registry.grow(size, args.batch)
                stack.settle(settings)
                for work in args.works.split(","):
                    runs = [measured_in_a_child("bench.audit_close_memory", env, work, "--run", str(registry.run.id)) for _ in range(args.runs)]
                    print(_line(work, size, runs), flush=True)


def _line(work: str, size: int, runs: list[dict[str, float]]) -> str:
    peaks, seconds = [r["peak_mb"] for r in runs], [r["seconds"] for r in runs]
    peak, before = statistics.median(peaks), statistics.median(r["rss_before_mb"] for r in runs)
    counted = {r.get("findings") for r in runs} - {None}
    return (f"{work} {size} findings{f' (summary: {counted})' if counted else ''}: peak RSS {peak:.0f} MB (before {before:.0f} MB, +{peak - before:.0f}), "
            f"{statistics.median(seconds):.2f} s (peaks {', '.join(f'{p:.0f}' for p in peaks)} MB; "
            f"{', '.join(f'{s:.2f}' for s in seconds)} s)")

if __name__ == "__main__":
    main()
