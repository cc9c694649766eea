from __future__ import annotations
import time, os
from sqlalchemy.orm import Session
from models.audit_runs import summarize_run
from tests.test_audit_record_signed import _started, _steps

N = int(os.environ.get("N", "20000"))

def test_profile(engine, keyring, seeded) -> None:
    from models.audit import FindingRow
    from models.audit_runs import pending_chunks
    from models.audit_tables import AuditChunk
    from models.report_view import report_view
    from models.reports import findings_csv, export_report
    from tests.test_audit_record_signed import written_by_plant
    with Session(engine) as session, session.begin():
        run = _started(session, keyring, {"scope": {"entity_type": "industry"}})
        chunk = session.get(AuditChunk, pending_chunks(session, run.id)[0])
        written_by_plant(session, run, chunk, keyring, [
            FindingRow(None, None, None, "rule-warning", f"finding {n} of many") for n in range(N)])
        _steps(session, run, keyring, batch_size=500)
        run_id = run.id
    with Session(engine) as session, session.begin():
        t = time.perf_counter()
        summarize_run(session, run_id=run_id, keyring=keyring)
        print("\nclose", round(time.perf_counter() - t, 2))
    for name, fn in [("csv", findings_csv), ("json", export_report), ("html", report_view)] * 2:
        with Session(engine) as session, session.begin():
            t = time.perf_counter()
            fn(session, run_id=run_id, keyring=keyring)
            print(name, round(time.perf_counter() - t, 2))
