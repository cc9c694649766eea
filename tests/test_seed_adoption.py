"""The seed adopts only its own entities (models/seed.py::_seeded): never another seeded entity that an API
write renamed or re-keyed to a name or key a later seed adds (helper-147)."""

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.entities import Industry, Skill
from models.errors import PlantError
from models.seed import seed_registry
from tests.test_registry_api import API


def test_a_seeded_entity_renamed_to_a_name_the_seed_adds_later_is_not_taken_for_that_entity(
        client, committed_steward, engine, write_ctx) -> None:
    """The bootstrap seeds the Governance industry (industry-gov); an operator renames it
    "Marketing" through the API, a name the full seed (a later release's, here) adds under
    industry-mkt. The seed found no industry-mkt, looked the name up, found an entity the
    seed wrote, and took Governance for Marketing: the Marketing skills went under it, and
    one entity stood for two seed keys."""
    with Session(engine) as session:
        governance = session.scalar(select(Industry).where(Industry.external_key == "industry-gov"))
    renamed = client.patch(f"{API}/genesis/industries/{governance.id}", json={"name": "Marketing"})
    assert renamed.status_code == 200, renamed.get_json()
    try:
        with Session(engine) as session, session.begin():
            seed_registry(session, write_ctx)
    except PlantError as refused:  # refusing (its code MKT is free, so creating it would also do) is fine
        assert "industry-mkt" in refused.detail, refused.detail
        return
    with Session(engine) as session:
        seo = session.scalar(select(Skill).where(Skill.external_key == "skill-seo-optimization"))
        assert seo.industry_id != governance.id, "the seeded Marketing skills went under the Governance industry"


def test_a_seeded_entity_given_a_key_the_seed_adds_later_is_refused_not_taken_for_that_entity(
        client, committed_steward, engine, write_ctx) -> None:
    """The same through the key (helper-147's second note): an API write gives the Governance
    industry (industry-gov) the key industry-mkt, which the full seed adds. The seed wrote its
    first version, so the creator check passed, and Governance was taken for Marketing."""
    with Session(engine) as session:
        governance = session.scalar(select(Industry).where(Industry.external_key == "industry-gov"))
    rekeyed = client.patch(f"{API}/genesis/industries/{governance.id}", json={"external_key": "industry-mkt"})
    assert rekeyed.status_code == 200, rekeyed.get_json()
    try:
        with Session(engine) as session, session.begin():
            seed_registry(session, write_ctx)
    except PlantError as refused:
        assert "industry-mkt" in refused.detail and "created under external_key 'industry-gov'" in refused.detail
        return
    raise AssertionError("the seed took the Governance industry for Marketing")
