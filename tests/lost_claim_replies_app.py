"""``worker.app`` in which the first job claim of each pool process commits and then finds its
connection dead (its reply lost, as a failover or a network cut loses it), and the claim's retry on
a fresh connection finds its own dead before it runs: a claim whose connection died twice, its first
try committed unseen. Each claim's worker token and each job task's request, as the run sees it, go
to the file named by ``LOST_CLAIM_RUNS_LOG``, one JSON object a line (for
tests/test_claims_retried_through_celery_and_worker_lost_errors.py)."""

import json
import os
from typing import Any

import psycopg
from celery.signals import task_prerun
from sqlalchemy import Connection, text

from models.settings import libpq_url
from tasks import runner, runtime

_real_claim = runner.claim_job
_tries: list[str] = []


def _note(**entry: Any) -> None:
    with open(os.environ["LOST_CLAIM_RUNS_LOG"], "a") as log:
        log.write(json.dumps(entry) + "\n")


def _found_dead(connection: Connection) -> None:
    """End this connection's server process from another, then use it: SQLAlchemy sees it dead."""
    pid = connection.connection.dbapi_connection.info.backend_pid
    with psycopg.connect(libpq_url(runtime.settings().database_url), autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
    connection.execute(text("SELECT 1"))


def _claim_whose_connection_dies_twice(connection: Connection, **kwargs: Any) -> Any:
    _tries.append(kwargs["worker"])
    _note(claim=kwargs["worker"])
    if len(_tries) == 1:
        _real_claim(connection, **kwargs)  # it commits: then its reply is lost
    if len(_tries) <= 2:
        _found_dead(connection)
    return _real_claim(connection, **kwargs)


runner.claim_job = _claim_whose_connection_dies_twice


@task_prerun.connect
def _note_the_request(task: Any, **_: Any) -> None:
    request = task.request
    _note(task=task.name, id=request.id, retries=request.retries, args=list(request.args or ()),
          queue=(request.delivery_info or {}).get("routing_key"),
          earlier=getattr(request, runner.EARLIER_CLAIMS_HEADER, None))


from worker.app import app  # noqa: E402 - after the patch it must see

__all__ = ["app"]
