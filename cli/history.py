"""``plant history``: export an entity's signed chain, and check a saved one offline.

Verification needs only public keys, as ``plant report verify`` does (:mod:`cli.evidence`: the
same key loading, refusals and key notes): every version's numbering, link, content hash,
canonical content and signature (:mod:`models.history_check`), and with ``--digest`` (a ledger
digest exported with ``--leaves``) that the chain still holds the head the digest attested. A
history that does not verify exits 4; anything that stops the check from running exits 1.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import click

from cli.evidence import (
    digest_with_its_leaves, export_document, jwks_option, read_document, refuse, shown, verification_keys,
)
from cli.jobs import connect
from cli.output import json_option, print_json
from models.canonical import strict_json_loads
from models.history_check import check_history, digest_holds

# Each entity type's collection under /api/v1 (web/api/registry.py's ROUTES; a test keeps them equal).
COLLECTIONS = {"industry": "/genesis/industries", "skill": "/genesis/skills", "job_role": "/genesis/job-roles",
               "team": "/teams", "agent": "/agents"}


@click.group()
def history() -> None:
    """An entity's signed chain: every version, checked offline with the published keys."""


@history.command("export")
@click.argument("entity_type", type=click.Choice(sorted(COLLECTIONS)))
@click.argument("entity_id", type=click.UUID)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write it here (default: stdout).")
@json_option
def export_history(entity_type: str, entity_id: uuid.UUID, output: Path | None, as_json: bool) -> None:
    """Export every signed version of an entity (GET .../history): keep it with the JWKS and a digest."""
    document = connect().get(f"{COLLECTIONS[entity_type]}/{entity_id}/history", expect=("items",))
    export_document(document, output, as_json, lambda: {
        "file": str(output), "entity_type": entity_type, "entity_id": str(entity_id),
        "versions": len(document["items"]) if isinstance(document["items"], list) else 0,
    }, lambda facts: f"wrote {facts['versions']} version(s) of {entity_type} {entity_id} to {output}")


@history.command("verify")
@click.argument("history_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@jwks_option
@click.option("--digest", "digest_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A ledger digest exported with --leaves: the chain must still hold the head it attested.")
@json_option
def verify_history_file(history_file: Path, jwks_file: Path | None, digest_file: Path | None, as_json: bool) -> None:
    """Check every version of a saved history (numbering, links, content hashes, canonical content, signatures),
    and with --digest that it holds the digest's head for the entity; exit 4 if anything does not verify."""
    keys, source = verification_keys(jwks_file)
    try:
        checked = check_history(strict_json_loads(read_document(history_file)), keys)
    except ValueError as exc:
        refuse(as_json, source, f"{history_file} is NOT a history export: {exc}")
    problems = [f"version {f.version}: {f.code} ({f.detail})" for f in checked.findings]
    facts: dict[str, Any] = {"entity_type": checked.entity_type, "entity_id": str(checked.entity_id),
                             "versions": checked.versions, "head": checked.head, "deleted": checked.deleted,
                             "signers": checked.signers, "sealed_signers": checked.sealed_signers}
    if digest_file is not None:
        digest_document = digest_with_its_leaves(digest_file, keys, source, as_json)
        leaf, problem = digest_holds(checked, digest_document)
        problems += [problem] if problem else []
        facts["digest"] = {"as_of": digest_document["as_of"], "head": leaf["head"] if leaf else None}
    if problems:
        listed = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        refuse(as_json, source, f"the history of {checked.entity_type} {checked.entity_id} does NOT verify: {listed}")
    if as_json:
        print_json({"valid": True, "keys": source, **facts})
        return
    click.echo(f"history valid: {checked.entity_type} {checked.entity_id}, {checked.versions} version(s) linked and "
               f"signed by {', '.join(map(shown, checked.signers))}{' (deleted)' if checked.deleted else ''}, head "
               f"{checked.head[:16]}…; {source}")
    if "digest" in facts:
        click.echo(f"the digest of {shown(facts['digest']['as_of'])} " + (
            "holds no head for it (created after the digest, or deleted before it)" if leaf is None
            else "holds a head this chain still has"))
    if checked.sealed_signers:
        click.echo(f"note: {', '.join(map(shown, checked.sealed_signers))} is sealed: that its versions were signed "
                   "before the seal is checked against the seal's digest by Plant's audits, not by this file")
