"""Review of health, metrics and the deployment files (helper-217).

The image runs gunicorn from ``/app/gunicorn.conf.py`` with the application installed in the
virtualenv, not beside the config file: the API must start that way, not only from a checkout.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from models.settings import Settings
from tests.conftest import REPO_ROOT, child_env, gunicorn_serving, stop_process_group, wait_for
from tests.test_metrics import parse, value

API = "/api/v1"


@contextmanager
def gunicorn_as_the_image_runs_it(settings: Settings, tmp_path: Path, *, processes: int) -> Iterator[str]:
    """gunicorn as ``docker/entrypoint.sh`` starts it in the image: ``WORKDIR /app`` holding only
    ``gunicorn.conf.py`` (the Dockerfile's one COPY of it), the packages importable from wherever
    they are installed. Yields the base URL once it answers."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    shutil.copy(REPO_ROOT / "gunicorn.conf.py", app_dir / "gunicorn.conf.py")
    with gunicorn_serving(settings, tmp_path / "gunicorn.log", processes=processes, threads=2, metrics_dir=None,
                          config=app_dir / "gunicorn.conf.py", cwd=app_dir) as base:
        yield base


def test_the_api_starts_from_the_image_s_layout_and_still_sums_its_workers_metrics(settings, tmp_path) -> None:
    """gunicorn.conf.py loaded its worker class from ``web/gunicorn_worker.py`` beside itself
    (89c5e4c). In the image that is ``/app/web/gunicorn_worker.py``, which the Dockerfile never
    copies (``web`` is installed in /opt/venv): the config file raised FileNotFoundError and the
    api role, in compose and on Cloud Run, never started. Every gunicorn test ran from the checkout."""
    route = f"{API}/jobs/<job_id>"
    with gunicorn_as_the_image_runs_it(settings, tmp_path, processes=2) as base:
        sent = 8
        for _ in range(sent):  # a fresh connection each time, so both workers take requests
            response = requests.get(f"{base}{API}/jobs/{uuid.uuid4()}", headers={"Connection": "close"}, timeout=10)
            assert response.status_code == 401
        # The master still imports neither the app nor prometheus_client before on_starting:
        # each worker's counts are in the shared directory, whichever worker answers the scrape.
        for _ in range(3):
            scraped = parse(requests.get(f"{base}/metrics", headers={"Connection": "close"}, timeout=10).text)
            assert value(scraped, "plant_http_requests_total", method="GET", route=route, status="401") == sent



# --- /health -----------------------------------------------------------------------------------


@contextmanager
def every_connection_slot_taken(settings: Settings) -> Iterator[int]:
    """Connections of an ordinary role (no superuser, as the runtime role is) opened until the server
    refuses the next one: every slot but the superusers' reserved ones is taken.
    Yields how many were opened; closes them all after."""
    import psycopg

    from models.settings import libpq_url

    admin = libpq_url(settings.database_url)
    role = "plant_review_slot_filler"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN")
    filler = psycopg.conninfo.make_conninfo(admin, user=role)
    held: list[psycopg.Connection] = []
    try:
        while True:
            assert len(held) < 1000, "the server never refused a connection"
            try:
                held.append(psycopg.connect(filler, connect_timeout=5))
            except psycopg.OperationalError as exc:  # libpq gives no SQLSTATE for a refused connection
                assert "remaining connection slots are reserved" in str(exc) or "too many clients" in str(exc), exc
                break
        yield len(held)
    finally:
        for conn in held:
            conn.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_health_does_not_call_a_database_that_refuses_new_connections_ok(settings) -> None:
    """With every connection slot taken (max_connections reached: an API scaled out past the
    connection budget of docs/deploy.md, a leak), the server refuses every new connection: a new
    API instance, a worker's new pool process, a request beyond the pool. /health answered on its
    own pooled connection and said database ``up``, so nothing told the operator why. It now says
    so, as ``degraded`` (200): this instance's pooled connections still serve, so a load balancer
    has no reason to pull it."""
    from web import create_app

    app = create_app(settings)
    client = app.test_client()
    assert client.get("/health").get_json()["checks"]["database"]["status"] == "up"  # its pool connects now
    with every_connection_slot_taken(settings) as opened:
        assert opened > 0
        response = client.get("/health")
    body = response.get_json()
    told = [name for name, check in body["checks"].items()
            if check["status"] == "down" and "connection" in check.get("error", "")]
    assert told == ["connections"], f"no check says new connections are refused: {body}"
    assert response.status_code == 200 and body["status"] == "degraded"
    assert body["checks"]["database"]["status"] == "up"  # this instance's pooled connection still answers
    full = body["checks"]["connections"]
    assert full["in_use"] >= full["limit"] and "new connections are refused" in full["error"]
    after = client.get("/health").get_json()["checks"]["connections"]
    assert after["status"] == "up" and 0 < after["in_use"] < after["limit"] == full["limit"], after




def test_a_recovery_sweep_that_fails_is_named_by_the_beat_check(settings, tmp_path) -> None:
    """Beat running and a worker consuming the maintenance queue, but every sweep failing (here the
    worker cannot reach the database; a sweep timing out on a large jobs table does the same): no
    sweep left its mark, and /health's beat check asked whether beat ran and the queue had a
    consumer, which it had, while recovery had stopped for another reason. It now names the failure."""
    import os

    import redis as redis_py

    from tasks.celery_app import create_celery
    from tests.conftest import refused_port
    from web import create_app

    alone = settings.model_copy(update={"redis_url": settings.redis_url.rsplit("/", 1)[0] + "/11"})
    broker = redis_py.Redis.from_url(alone.redis_url)
    broker.flushdb()
    with refused_port() as port, open(tmp_path / "worker.log", "wb") as log:
        env = child_env(alone.model_copy(update={"database_url": f"postgresql+psycopg://postgres@127.0.0.1:{port}/plant"}))
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "default,audit,maintenance", "-c", "1",
             "-n", f"no-database-{os.getpid()}@%h", "--without-mingle", "--without-gossip"],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            client = create_app(alone).test_client()
            wait_for(lambda: client.get("/health").get_json()["checks"]["workers"]["status"] == "up", timeout=60,
                     interval=0.2, what="the worker to consume every queue")
            create_celery(alone).send_task("plant.maintenance.requeue_stale_jobs")
            wait_for(lambda: "requeue_stale_jobs" in (tmp_path / "worker.log").read_text()
                     and "OperationalError" in (tmp_path / "worker.log").read_text(),
                     timeout=60, interval=0.2, what="the worker to fail the sweep")
            beat = client.get("/health").get_json()["checks"]["beat"]
        finally:
            stop_process_group(worker)
            broker.flushdb()
            broker.close()
    assert beat["status"] == "down"
    assert "the latest sweep failed: OperationalError" in beat["error"], beat


# --- /metrics ----------------------------------------------------------------------------------


def _median_bucket(before: dict, after: dict, name: str, **labels: str) -> tuple[float, float]:
    """The bounds (lower, upper] of the bucket holding the median of the observations made
    between two scrapes, from the histogram's cumulative bucket counts."""
    from tests.test_metrics import value

    bounds = sorted(float(dict(key)["le"]) for (sample, key), _ in after.items()
                    if sample == f"{name}_bucket" and {k: v for k, v in key if k != "le"} == labels)
    counts = [value(after, f"{name}_bucket", **labels, le=_le(b)) - value(before, f"{name}_bucket", **labels, le=_le(b))
              for b in bounds]
    lower = 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= counts[-1] / 2:
            return lower, bound
        lower = bound
    raise AssertionError("no observation")


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def test_request_latency_buckets_resolve_what_the_api_takes(client) -> None:
    """The request histogram's lowest bucket was 5 ms, and a job's GET takes about half a millisecond
    in the app (docs/benchmarks.md: 514 µs median): nearly every request fell in that first bucket, so
    ``histogram_quantile`` could only interpolate between 0 and 5 ms, and a GET ten times slower than
    usual looked the same. The bucket holding the median GET must have a lower bound above zero and
    at most 2.5 times it."""
    from tests.test_metrics import scrape

    job = client.post(f"{API}/diagnostics/sleep", json={"seconds": 0}).headers["Location"]
    before = scrape(client)
    for _ in range(40):
        assert client.get(job).status_code == 200
    lower, upper = _median_bucket(before, scrape(client), "plant_http_request_duration_seconds",
                                  method="GET", route=f"{API}/jobs/<job_id>")
    assert lower > 0, f"the median GET fell in the lowest bucket, (0, {upper}]"
    assert upper <= 2.5 * lower



def test_a_job_handed_back_after_a_long_run_is_not_reported_as_a_long_backlog(client, engine) -> None:
    import datetime as dt

    from sqlalchemy import func, insert, update
    from sqlalchemy.orm import Session

    from models.job_lifecycle import claim_job
    from models.job_recovery import release_for_retry
    from models.jobs import Job
    from tests.test_metrics import scrape, value

    with engine.begin() as connection:  # a row without a message: no worker of the suite takes it
        job_id = connection.execute(insert(Job).values(
            kind="audit.run", queue="audit", status="queued", params={},
            created_at=func.now() - dt.timedelta(hours=1)).returning(Job.id)).scalar_one()
    with Session(engine) as session, session.begin():
        claim = claim_job(session, job_id=job_id, worker="review@host", lease_seconds=600)
        assert claim is not None
    with Session(engine) as session, session.begin():  # its worker shut down: handed back, queued again now
        assert release_for_retry(session, claim=claim, error={}, handed_back=True) == "queued"
    assert value(scrape(client), "plant_jobs_queued_oldest_age_seconds", queue="audit") < 300
    with Session(engine) as session, session.begin():  # and a retry after a transient error, once more
        claim = claim_job(session, job_id=job_id, worker="review@host", lease_seconds=600)
        assert claim is not None
        session.execute(update(Job).where(Job.id == job_id).values(queued_at=func.now() - dt.timedelta(hours=2)))
        assert release_for_retry(session, claim=claim, error={}) == "queued"
    assert value(scrape(client), "plant_jobs_queued_oldest_age_seconds", queue="audit") < 300
    with engine.begin() as connection:  # a job that waits, from when it was queued
        connection.execute(update(Job).where(Job.id == job_id).values(queued_at=func.now() - dt.timedelta(hours=1)))
    assert value(scrape(client), "plant_jobs_queued_oldest_age_seconds", queue="audit") >= 3600


# --- Terraform ---------------------------------------------------------------------------------


def test_the_cloud_sql_client_role_reaches_plant_s_instance_only() -> None:
    """``roles/cloudsql.client`` was granted on the project, unconditioned: the API, worker, migrate
    and seal-keys identities could open connections to every Cloud SQL instance of the project, not
    only Plant's. An IAM condition on the instance's resource name (Google's documented way for
    Cloud SQL) keeps the grant to the one instance their /cloudsql volume mounts."""
    from tests.test_deploy_terraform import MODULES, ROOT, module_blocks, one, resources

    grant = resources(MODULES / "run", "google_project_iam_member")["cloudsql_client"]
    assert grant["role"] == "roles/cloudsql.client"
    condition = one(grant.get("condition", []))
    assert condition["expression"] == ("resource.name == 'projects/${var.project_id}/instances/"
                                       "${var.cloudsql_instance_name}' && "
                                       "resource.type == 'sqladmin.googleapis.com/Instance'")
    assert condition["title"]
    call = module_blocks(ROOT)["module"]["run"]
    assert call["cloudsql_instance_name"] == "${module.database.instance_name}"


def test_a_protected_database_s_backups_outlive_its_instance() -> None:
    """Deleting a Cloud SQL instance deletes its automated backups with it, unless it retains
    them: a protected database (prod) lost every backup of the chain the moment its instance went,
    whatever removed it (protection lifted first, the console, a replace). They are kept for
    protected databases; a dev one (unprotected) leaves none behind."""
    from tests.test_deploy_terraform import MODULES, one, resources

    settings = one(resources(MODULES / "database", "google_sql_database_instance")["postgres"]["settings"])
    assert settings.get("retain_backups_on_delete") == "${var.deletion_protection}"


# --- Compose -----------------------------------------------------------------------------------


def _bytes(size: str | int) -> int:
    """A compose size (``shm_size``): bytes, or a number with a b/k/m/g unit."""
    if isinstance(size, int):
        return size
    number, unit = re.fullmatch(r"(\d+)\s*([bkmg]?)i?b?", size.strip().lower()).groups()
    return int(number) * 1024 ** "bkmg".index(unit or "b")


def test_postgres_has_shared_memory_for_parallel_index_builds_and_queries() -> None:
    """PostgreSQL keeps each parallel operation's shared memory in /dev/shm, which Docker caps at
    64 MiB unless told otherwise. A parallel HNSW build sizes its segment from maintenance_work_mem
    (64 MiB by default) and fails at the cap with "could not resize shared memory segment ... No space
    left on device" (pgvector/pgvector#453, whose README asks for --shm-size): restoring a
    ``pg_dump`` backup (docs/deploy.md) rebuilds the five embedding indexes on full tables, the case
    where PostgreSQL builds in parallel, and a large audit's parallel hash joins draw on it too."""
    from tests.test_deploy_compose import services

    postgres = services()["postgres"]
    assert "shm_size" in postgres, "postgres runs with Docker's 64 MiB /dev/shm"
    assert _bytes(postgres["shm_size"]) >= 512 * 1024 ** 2
