"""``plant entity``: restore a frozen entity row from its signed head, list the restores.

Local commands: they work on ``DATABASE_URL`` (next to ``make dev``, the one in its
``services.env``: ``cli.local``) with this machine's signing keys, because a restore is an
operator's repair, not an API client's write.
"""

from __future__ import annotations

import getpass
import os
import uuid

import click

from cli.errors import PlantCliError, VerificationFailed
from cli.local import local_settings
from cli.output import json_option, print_json, print_table
from models.db import one_off_sessions, transaction
from models.embeddings import make_embedder
from models.entities import EntityType
from models.errors import PlantError
from models.keys import keyring_from_settings
from models.key_seals import with_seal_lists
from models.repair import EntityRepair, repairs, restore_entity, verify_repair

ENTITY_TYPES = click.Choice([t.value for t in EntityType])
MAX_ACTOR = EntityRepair.__table__.c.actor.type.length  # what a repair record holds


def _actor(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """The database takes neither a longer actor nor a NUL: refused here, before anything is read."""
    if value is not None and (len(value) > MAX_ACTOR or "\x00" in value):
        raise click.BadParameter(f"must be at most {MAX_ACTOR} characters, with no NUL")
    return value


@click.group()
def entity() -> None:
    """Repair an entity whose row was edited outside Plant (local: DATABASE_URL and key files)."""


@entity.command("restore")
@click.argument("entity_type", type=ENTITY_TYPES)
@click.argument("entity_id", type=click.UUID)
@click.option("--actor", default=None, callback=_actor,
              help="Who restores, for the signed repair record (default: operator:<login>).")
@json_option
def restore(entity_type: str, entity_id: uuid.UUID, actor: str | None, as_json: bool) -> None:
    """Set ENTITY_ID's row back to its newest signed version, if its whole chain verifies.

    Writes a signed, append-only repair record holding what the row held before. A chain
    that does not verify is refused (exit 1) and nothing is changed.
    """
    settings = local_settings()
    keyring = keyring_from_settings(settings)
    try:
        with one_off_sessions(settings) as sessions, transaction(sessions) as session:
            outcome = restore_entity(session, entity_type=EntityType(entity_type), entity_id=entity_id, keyring=keyring,
                                     embedder=make_embedder(settings.embedder),
                                     actor=actor or f"operator:{_operator()}")
    except PlantError as exc:
        raise PlantCliError(exc.detail) from exc
    if as_json:
        print_json(outcome.as_json())
    elif not outcome.restored:
        click.echo(f"{entity_type} {entity_id} already equals its head version {outcome.version}; nothing to restore")
    else:
        click.echo(f"restored {entity_type} {entity_id} to version {outcome.version} ({outcome.finding}; "
                   f"fields set back: {', '.join(outcome.changed_fields) or 'none, only its head pointer'})")
        assert outcome.repair is not None
        click.echo(f"repair record {outcome.repair.id}, signed by {outcome.repair.kid}")


@entity.command("repairs")
@click.option("--entity-id", type=click.UUID, default=None, help="Only this entity's restores.")
@json_option
def list_repairs(entity_id: uuid.UUID | None, as_json: bool) -> None:
    """Every restore, oldest first, each with its signature checked (exit 4 if one fails)."""
    settings = local_settings()
    keyring = keyring_from_settings(settings)
    with one_off_sessions(settings) as sessions, sessions() as session:
        exported = [record.as_json() for record in repairs(session, entity_id=entity_id)]
        keyring = with_seal_lists(keyring, session)  # a sealed key's record must be on its seal's list
    rows = [(record, verify_repair(record, keyring)) for record in exported]
    if as_json:
        print_json([{**record, "verified": ok} for record, ok in rows])
    else:
        print_table([{**record, "verified": ok} for record, ok in rows], [
            ("REPAIRED AT", lambda r: r["repaired_at"]), ("TYPE", lambda r: r["entity_type"]),
            ("ENTITY", lambda r: r["entity_id"]), ("VERSION", lambda r: r["version"]), ("FINDING", lambda r: r["finding"]),
            ("ACTOR", lambda r: r["actor"]), ("SIGNATURE", lambda r: "ok" if r["verified"] else "INVALID")])
    bad = [record["id"] for record, ok in rows if not ok]
    if bad:
        raise VerificationFailed(f"{len(bad)} repair record(s) do not verify: {', '.join(bad[:5])}")


def _operator() -> str:
    """Who runs the command, for a repair record without ``--actor``: the login name, or the
    uid where it has none (a container run as ``--user N`` with no passwd entry, where
    ``getpass.getuser`` raises)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"
