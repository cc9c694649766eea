"""Row locks for registry writes: an entity is locked before a version is appended to it,
and a row that drifted from its signed head (edited outside Plant) is refused as
``EntityTampered`` until it is restored: no version is signed on top of it, nor a seat
decided on it.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.chain import ChainFinding
from models.chain_verification import head_drift
from models.entities import ENTITY_MODELS, EntityType, GovernedEntity, governed_content
from models.errors import EntityTampered, NotFound
from models.seal_check import SEALED_CODE
from models.signing import KeyRing


def lock_entity(session: Session, entity_type: EntityType, entity_id: uuid.UUID) -> GovernedEntity:
    """The entity, locked ``FOR NO KEY UPDATE``: writers of it wait, but a row that only
    references it (a foreign-key check's ``FOR KEY SHARE``) does not, so lock orders that
    differ only by such a check (a role change locking the role then its teams, an agent
    written into a team of that role) cannot deadlock."""
    model = ENTITY_MODELS[entity_type]
    entity = session.execute(
        select(model).where(model.id == entity_id).with_for_update(key_share=True).execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if entity is None:
        raise NotFound(f"no {entity_type.value} with id {entity_id}", id=str(entity_id))
    return entity


def lock_for_write(session: Session, entity_type: EntityType, entity_id: uuid.UUID, keyring: KeyRing) -> GovernedEntity:
    """Lock the entity to append a version, refusing one whose row drifted from its head
    (``models.chain_verification.head_drift``): ``EntityTampered``, 409, until the row is restored."""
    entity = lock_entity(session, entity_type, entity_id)
    refuse_if_tampered(session, entity, keyring)
    return entity


def refuse_if_tampered(session: Session, entity: GovernedEntity, keyring: KeyRing) -> None:
    drift = head_drift(session, [(entity, governed_content(entity))], keyring).get(entity.id)
    if drift is not None:
        raise tampered_error(entity.entity_type_value, entity.id, drift)


def tampered_error(entity_type: EntityType, entity_id: uuid.UUID, drift: ChainFinding) -> EntityTampered:
    until = ("ever: its head was signed by a sealed key, and no restore can vouch for it" if drift.code == SEALED_CODE
             else "until the row is restored to its head version")
    return EntityTampered(
        f"{entity_type.value} {entity_id}: {drift.detail} ({drift.code}); no version is signed on top of it, "
        f"nor a seat decided on it, {until}",
        id=str(entity_id), finding=drift.code,
    )
