"""Review of how Plant is run and shown: gunicorn.conf.py's process-edge variables, the seed
over soft-deleted entities, and the Cloud Run worker pools' probes."""

from __future__ import annotations

import datetime as dt
import os
import runpy
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.entities import ENTITY_MODELS, Agent, EntityType
from models.errors import PlantError
from models.registry import update_entity
from models.seed import STEWARD_KEY, seed_registry

REPO = Path(__file__).resolve().parent.parent
DELETED = {"deleted_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}


# --- gunicorn.conf.py ---------------------------------------------------------------------------


@pytest.fixture
def gunicorn_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """gunicorn.conf.py sets derived variables with os.environ.setdefault: remembered here and
    removed after the test (tests/test_deploy_dockerfile.py does the same)."""
    from tests.conftest import GUNICORN_DERIVED

    for name in (*GUNICORN_DERIVED, "WEB_CONCURRENCY", "PLANT_WEB_THREADS"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize("name", ["WEB_CONCURRENCY", "PLANT_WEB_THREADS"])
def test_a_blank_gunicorn_count_is_its_default(gunicorn_env: pytest.MonkeyPatch, name: str) -> None:
    """`WEB_CONCURRENCY=` (a blank line kept from .env.example, `docker run -e WEB_CONCURRENCY=`) is
    set and empty: int("") raised in gunicorn.conf.py, and the API container exited at start."""
    gunicorn_env.setenv(name, "")
    config = runpy.run_path(str(REPO / "gunicorn.conf.py"))
    assert config["workers"] == max(2, os.cpu_count() or 1)
    assert config["threads"] == 8


@pytest.mark.parametrize("value", ["two", "0", "-1"])
def test_a_bad_gunicorn_count_names_its_variable(gunicorn_env: pytest.MonkeyPatch, value: str) -> None:
    gunicorn_env.setenv("WEB_CONCURRENCY", value)
    with pytest.raises(ValueError, match="WEB_CONCURRENCY"):
        runpy.run_path(str(REPO / "gunicorn.conf.py"))


# --- the seed over soft-deleted entities ------------------------------------------------------------


def _counts(engine) -> dict[str, int]:
    with Session(engine) as session:
        return {t.value: session.scalar(select(func.count()).select_from(m)) for t, m in ENTITY_MODELS.items()}


def test_a_seed_that_would_build_on_a_deleted_steward_says_so(engine, write_ctx, committed_steward, monkeypatch) -> None:
    """The bootstrap (a release's seed before the full data set) is in; its steward is then soft-
    deleted (by a release before the reference guards: it governs the bootstrap's entities). The
    next seed found the deleted steward by its key, took it as its own and tried to
    govern 90 new entities with it: refused, but as "no industry has external_key 'industry-mkt'"
    with advice about changed keys and names, which is not what was wrong."""
    from tests.test_seat_rules import as_an_older_release

    with as_an_older_release(monkeypatch), Session(engine) as session, session.begin():
        update_entity(session, entity_type=EntityType.AGENT, entity_id=committed_steward, changes=DELETED, ctx=write_ctx)
    before = _counts(engine)
    with pytest.raises(PlantError) as refused, Session(engine) as session, session.begin():
        seed_registry(session, write_ctx)
    assert f"agent {STEWARD_KEY!r}" in refused.value.detail and "deleted" in refused.value.detail, refused.value.detail
    assert refused.value.extensions["id"] == str(committed_steward)
    assert _counts(engine) == before  # nothing half-seeded


def test_a_deleted_seeded_entity_stays_deleted_and_the_seed_stays_idempotent(engine, write_ctx, seeded) -> None:
    """Nothing new names a deleted agent: the seed leaves the deletion alone and creates nothing."""
    with Session(engine) as session, session.begin():
        agent = session.scalar(select(Agent).where(Agent.external_key == "agent-001"))
        update_entity(session, entity_type=EntityType.AGENT, entity_id=agent.id, changes=DELETED, ctx=write_ctx)
    with Session(engine) as session, session.begin():
        again = seed_registry(session, write_ctx)
    assert sum(again.created.values()) == 0
    with Session(engine) as session:
        assert session.scalar(select(Agent.deleted_at).where(Agent.external_key == "agent-001")) is not None


# --- Cloud Run worker pools -------------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason=(
    "hashicorp/google added startup_probe and liveness_probe to google_cloud_run_v2_worker_pool in 7.x "
    "(GoogleCloudPlatform/magic-modules#15156), but a worker pool's probes are HTTP, TCP or gRPC only: "
    "Celery workers and beat listen on no port, so a probe needs a health listener in those roles first "
    "(and the provider's lower bound raised above 6.50.0, the schema tests/data checks against)"))
@pytest.mark.parametrize("pool", ["worker", "worker_audit", "beat"])
def test_every_worker_pool_has_a_liveness_probe(pool: str) -> None:
    """A worker whose broker connection hangs, or a beat whose loop stops, keeps its instance: the
    image's HEALTHCHECK (a ping to the node, the schedule file's age) is Docker's, and Cloud Run
    runs none of it. Nothing restarts a stuck worker pool instance."""
    from tests.test_deploy_terraform import MODULES, clean, module_blocks

    body = clean(module_blocks(MODULES / "run")["resource"][("google_cloud_run_v2_worker_pool", pool)])
    (container,) = body["template"][0]["containers"]
    assert "liveness_probe" in container
