"""Runs the idempotent demo seed against a database, as ``plant seed`` and ``plant dev`` do."""

from __future__ import annotations

from models.db import one_off_sessions, transaction
from models.embeddings import make_embedder
from models.keys import keyring_from_settings
from models.registry import WriteContext
from models.seed import SeedResult, seed_registry
from models.settings import Settings

SEED_ACTOR = "seed"


def seed_database(settings: Settings) -> SeedResult:
    """Load the demo registry in one transaction; entities that exist are left alone."""
    ctx = WriteContext(
        actor=SEED_ACTOR, keyring=keyring_from_settings(settings), embedder=make_embedder(settings.embedder)
    )
    with one_off_sessions(settings) as sessions, transaction(sessions) as session:
        return seed_registry(session, ctx)
