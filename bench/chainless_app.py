"""Benchmark-only baseline for chain writes: Plant's API with the chain append left out.

``gunicorn -c gunicorn.conf.py 'bench.chainless_app:create_app()'`` serves the very same
routes, views, validation, row locks, embeddings, constitution checks and commits as
``web:create_app()``, except that a registry write does not touch the chain: it neither
reads the head version to check the row against it (``head_drift``) nor appends a signed
version. The entity's version number still advances, but nothing is canonicalized,
hashed, signed or inserted into ``entity_versions``. Its rows therefore drift from
their heads, which Plant refuses to write on top of: the scenario gives it entities of
its own. The swap happens in this process only, when the app is built; Plant itself has
no switch for it.
"""

from __future__ import annotations

from flask import Flask

import models.entity_locks
import models.registry
from models.entities import GovernedEntity
from web import create_app as create_plant_app


def _advance_without_chain(session: object, *, entity: GovernedEntity, **_: object) -> None:
    # Takes whatever else append_version takes (actor, keyring, content, ...).
    entity.version += 1


def _no_head_check(*_: object) -> dict:
    # Takes whatever head_drift takes (session, entities, keyring).
    return {}


def create_app() -> Flask:
    models.registry.append_version = _advance_without_chain  # type: ignore[assignment]
    models.entity_locks.head_drift = _no_head_check  # type: ignore[assignment]
    return create_plant_app()
