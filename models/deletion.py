"""Deleting governed entities, one or several together (a signed version setting ``deleted_at``).

A deletion goes through :func:`models.registry.update_entity` like any write; what a deletion
is refused for (a live dependent, 409 ``entity-referenced``; a member of a team; a deleted
entity, 409 ``entity-deleted``) is checked there (``models.reference_guards``,
``models.seat_guards``). Each deletion is judged when it is written, against the entities live
then: two live entities naming each other (an agent holding a job role it governs) could
never go one at a time, since each is the other's dependent. :func:`delete_entities` deletes a
set together: an entity of the set is no dependent of another (all of them are deleted by the
call, or none is), and every other live entity naming one of them still refuses the lot.
Both are domain calls only: no API route or CLI command deletes entities yet.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy.orm import Session

from models.entities import EntityType, GovernedEntity
from models.entity_locks import lock_for_write
from models.reference_guards import DELETED_TOGETHER
from models.registry import WriteContext, update_entity


def delete_entities(session: Session, entities: Sequence[tuple[EntityType, uuid.UUID]], *, ctx: WriteContext,
                    deleted_at: dt.datetime | None = None) -> list[GovernedEntity]:
    """Delete every (type, id) of ``entities`` in one savepoint, or none (the first refusal is
    raised, the savepoint rolled back). Their rows are locked first, in id order, so that no
    deletion of the set waits for a row lock after another took its reference lock (a write
    naming one of them while it locks another's row would wait for it in a cycle); two calls
    lock their common entities in the same order. Flushes; the caller commits."""
    when = deleted_at or dt.datetime.now(dt.UTC)
    targets = list(dict.fromkeys(entities))
    for kind, entity_id in sorted(targets, key=lambda t: t[1]):
        lock_for_write(session, kind, entity_id, ctx.keyring)
    with session.begin_nested(), _deleting_together(session, {entity_id for _, entity_id in targets}):
        return [update_entity(session, entity_type=kind, entity_id=entity_id, changes={"deleted_at": when}, ctx=ctx)
                for kind, entity_id in targets]


@contextmanager
def _deleting_together(session: Session, ids: set[uuid.UUID]) -> Iterator[None]:
    session.info[DELETED_TOGETHER] = frozenset(ids)
    try:
        yield
    finally:
        session.info.pop(DELETED_TOGETHER, None)
