"""The benchmark's chainless baseline still serves writes (it broke twice unseen: only a bench run showed it)."""

from sqlalchemy import func, select
from sqlalchemy.orm import Session

import models.entity_locks
import models.registry
from models.chain import EntityVersion

API = "/api/v1"


def test_the_chainless_baseline_writes_without_touching_the_chain(settings, engine, client, committed_steward,
                                                                  admin_key, monkeypatch) -> None:
    from bench import chainless_app

    # It swaps them process-wide: restored after the test.
    monkeypatch.setattr(models.registry, "append_version", models.registry.append_version)
    monkeypatch.setattr(models.entity_locks, "head_drift", models.entity_locks.head_drift)
    for variable, value in (("DATABASE_URL", settings.database_url), ("REDIS_URL", settings.redis_url),
                            ("PLANT_DATA_DIR", str(settings.data_dir))):
        monkeypatch.setenv(variable, value)
    industry = client.post(f"{API}/genesis/industries", json={
        "name": "Baseline Industry", "code": "BSL", "governance_agent_id": str(committed_steward)}).get_json()
    app = chainless_app.create_app()
    try:
        chainless = app.test_client()
        chainless.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_key}"
        for n in range(2):  # the second write lands on a row that already drifted from its head
            response = chainless.patch(f"{API}/genesis/industries/{industry['id']}", json={"description": f"write {n}"})
            assert response.status_code == 200, response.get_json()
    finally:
        app.extensions["plant"].engine.dispose()
    with Session(engine) as session:
        versions = session.scalar(select(func.count()).select_from(EntityVersion).where(EntityVersion.entity_id == industry["id"]))
    assert versions == 1


def test_the_api_floors_read_the_job_and_only_the_observed_one_adds_plant_s_request_instrumentation(
        settings, client, admin_key, monkeypatch, caplog) -> None:
    from bench import floor_flask

    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    job = client.post(f"{API}/diagnostics/sleep", json={"seconds": 0}).get_json()
    bearer = {"Authorization": f"Bearer {admin_key}"}
    for observed in (False, True):
        app = floor_flask.create_app(observed=observed)
        try:
            floor = app.test_client()
            caplog.clear()
            response = floor.get(f"/floor/jobs/{job['id']}", headers=bearer)
            assert response.status_code == 200
            assert (response.get_json()["id"], response.get_json()["kind"]) == (job["id"], "diagnostics.sleep")
            assert floor.get(f"/floor/jobs/{job['id']}", headers={"Authorization": "Bearer nope"}).status_code == 401
            logged = [r for r in caplog.records if r.name == "web.requests"]
            assert ("X-Request-ID" in response.headers) is observed
            assert [r.route for r in logged] == (["/floor/jobs/<job_id>"] * 2 if observed else [])
        finally:
            floor_flask.close_connections(app)
