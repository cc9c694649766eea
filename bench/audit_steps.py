"""Plant's audit chunk steps against the chain-only floor's loop, in one process.

``make bench`` measures the full audit over two Celery workers; this tells how much of
the gap to the floor is Python work in the chunk steps themselves, and lets two commits be
compared on the same footing: run it from each checkout (``PYTHONPATH=<checkout>``) and
compare the ratios, each measured against the floor in its own run.

It builds ``--entities`` industries × 5 versions on its own embedded stack
(:mod:`bench.audit_data`) and analyzes it, then alternates ``--runs`` times: the floor's loop
(:func:`bench.audit_floor.verify_range_here`: stream every version, verify every chain
and head signature) and Plant's steps (``start_run`` with one chunk, then
``audit_chunk_step`` in batches of ``--batch`` until done, rolled back after each run so
every run audits the same registry). CPU is the process's own; the database's is not
in it. Prints the medians and Plant's share of the floor.

    python -m bench.audit_steps --entities 20000 --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from sqlalchemy.orm import Session

from bench.audit_data import generate
from bench.audit_floor import verify_range_here
from bench.harness import BenchStack
from models.audit_chunks import audit_chunk_step, pending_chunks
from models.audit_runs import MAX_UUID, start_run
from models.job_lifecycle import create_job
from models.keys import keyring_from_settings
from models.seed import bootstrap_steward
from models.settings import Settings
from models.embeddings import HashingEmbedder


def _plant(stack: BenchStack, settings: Settings, batch: int) -> None:
    keyring = keyring_from_settings(settings)
    with Session(stack.engine(settings)) as session, session.begin():
        job = create_job(session, kind="audit.run", params={}, queue="audit")
        run = start_run(session, job_id=job.id, params={}, keyring=keyring, embedder=HashingEmbedder(), chunk_entities=MAX_UUID)
        for chunk_id in pending_chunks(session, run.id):
            while not audit_chunk_step(session, chunk_id=chunk_id, keyring=keyring, embedder=HashingEmbedder(), batch_size=batch).done:
                pass
        session.rollback()


def _timed(work: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    with BenchStack() as stack:
        settings = stack.fresh_database("bench_audit_steps")
        with stack.session(settings) as session:
            steward = bootstrap_steward(session, stack.write_context)
        generate(settings, entities=args.entities, versions=5, steward=steward)
        stack.settle(settings)  # as the audit scenario does
        sides = {"floor": lambda: verify_range_here(settings), "plant": lambda: _plant(stack, settings, args.batch)}
        times: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
        for work in sides.values():  # warm-up
            work()
        for _ in range(args.runs):
            for side, work in sides.items():
                times[side].append(_timed(work))
    for side, runs in times.items():
        print(f"{side}: wall {statistics.median(w for w, _ in runs):.2f} s, CPU {statistics.median(c for _, c in runs):.2f} s "
              f"(CPU runs {', '.join(f'{c:.2f}' for _, c in runs)})")
    floor, plant = (statistics.median(c for _, c in times[side]) for side in ("floor", "plant"))
    print(f"plant's chunk steps at {floor / plant:.0%} of the floor's rate (CPU, {args.entities} entities x 5 versions)")


if __name__ == "__main__":
    main()
