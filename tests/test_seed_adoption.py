"""The seed adopts only its own entities (models/seed.py::_seeded): never another seeded entity that an API
write renamed or re-keyed to a name or key a later seed adds (helper-147)."""

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from models.entities import Industry, Skill
from models.errors import PlantError
from models.seed import seed_registry
from tests.test_registry_api import API


@pytest.mark.parametrize(("change", "refusal_says"), [
    ({"name": "Marketing"}, "industry-mkt"),
    ({"external_key": "industry-mkt"}, "created under external_key 'industry-gov'"),
], ids=["renamed", "re-keyed"])
def test_a_seeded_entity_given_the_name_or_key_the_seed_adds_later_is_not_taken_for_that_entity(
        client, committed_steward, engine, write_ctx, change, refusal_says) -> None:
    """The bootstrap seeds the Governance industry (industry-gov); an operator renames it
    "Marketing", or gives it the key industry-mkt, through the API: a name or key the full seed
    (a later release's, here) adds. The seed took Governance for Marketing, by the name (it was
    the seed's, under another key) or by the key (the seed wrote its first version): the
    Marketing skills went under it, and one entity stood for two seed keys (helper-147)."""
    with Session(engine) as session:
        governance = session.scalar(select(Industry).where(Industry.external_key == "industry-gov"))
    changed = client.patch(f"{API}/genesis/industries/{governance.id}", json=change)
    assert changed.status_code == 200, changed.get_json()
    try:
        with Session(engine) as session, session.begin():
            seed_registry(session, write_ctx)
    except PlantError as refused:  # refusing is fine, naming the seed's key
        assert "industry-mkt" in refused.detail and refusal_says in refused.detail, refused.detail
        return
    with Session(engine) as session:
        seo = session.scalar(select(Skill).where(Skill.external_key == "skill-seo-optimization"))
        assert seo.industry_id != governance.id, "the seeded Marketing skills went under the Governance industry"
