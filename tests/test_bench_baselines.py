"""The benchmark's chainless baseline still serves writes (it broke twice unseen: only a bench run showed it)."""

from sqlalchemy import func, select
from sqlalchemy.orm import Session

import models.registry
from models.chain import EntityVersion

API = "/api/v1"


def test_the_chainless_baseline_writes_without_touching_the_chain(settings, engine, client, committed_steward,
                                                                  admin_key, monkeypatch) -> None:
    from bench import chainless_app

    for name in ("append_version", "head_drift"):  # it swaps them process-wide: restored after the test
        monkeypatch.setattr(models.registry, name, getattr(models.registry, name))
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
