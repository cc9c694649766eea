"""``plant certificate``: export a skill's signed certificate, and check a saved one offline.

Verification needs only public keys, as ``plant report verify`` and ``plant history verify``
do (:mod:`cli.evidence`: the same key loading, refusals and key notes): a saved JWK Set
(``--jwks FILE``) or, without one, the keys the server publishes. ``--skill`` pins the skill
the certificate must be of; ``--history`` (the skill's ``plant history export``) checks, as of
that export, that the certificate still stands: retiring or deleting the skill withdraws it,
which no signature on the certificate can show. A certificate that does not verify, or does
not stand, exits 4; anything that stops the check from running (an unreadable key file, no
server) exits 1 (:mod:`models.certificate_check`).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import click

from cli.errors import PlantCliError
from cli.evidence import (
    echo_key_notes, read_document, refuse, save_evidence, seal_note, shown, upcoming_note, jwks_option, verification_keys,
)
from cli.jobs import connect
from cli.output import json_option, print_json
from cli.work import resolve_skill
from models.canonical import strict_json_loads
from models.certificate_check import certificate_export, certificate_standing, check_certificate, version_contents
from models.history_check import check_history


@click.group()
def certificate() -> None:
    """Skill certificates: export one, verify a saved one offline."""


@certificate.command("export")
@click.argument("skill")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write it here (default: stdout).")
@json_option
def export_certificate(skill: str, output: Path | None, as_json: bool) -> None:
    """Export the certificate of SKILL (its id or skill_key), with the skill id it is signed for."""
    found = resolve_skill(connect(), skill)
    if not isinstance(found.get("certificate"), dict):
        raise PlantCliError(f"skill {shown(found.get('id'))} holds no certificate (it is {shown(found.get('status'))})")
    document = certificate_export(uuid.UUID(found["id"]), found["certificate"])
    if output is None:
        print_json(document)
        return
    save_evidence(output, (json.dumps(document, indent=2) + "\n").encode())
    facts = {"file": str(output), "skill_id": found["id"], "certificate_id": found["certificate"].get("certificate_id"),
             "status": found.get("status")}
    if as_json:
        print_json(facts)
    else:
        click.echo(f"wrote certificate {shown(facts['certificate_id'])} of skill {facts['skill_id']} "
                   f"(now {shown(facts['status'])}) to {output}")


@certificate.command("verify")
@click.argument("certificate_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@jwks_option
@click.option("--skill", "expected_skill", type=click.UUID,
              help="The skill the certificate must be of: a valid certificate of another skill exits 4.")
@click.option("--history", "history_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The skill's history export: the certificate must be recorded there and not withdrawn since.")
@json_option
def verify_certificate_file(certificate_file: Path, jwks_file: Path | None, expected_skill: uuid.UUID | None,
                            history_file: Path | None, as_json: bool) -> None:
    """Check a saved certificate's signature for its skill (with --skill that it is that skill's, with --history
    that the skill's chain records it and has not withdrawn it); exit 4 if it does not verify."""
    keys, source = verification_keys(jwks_file)
    try:
        checked = check_certificate(_parsed(certificate_file, as_json, source), keys, expected_skill=expected_skill)
    except ValueError as exc:
        refuse(as_json, source, f"{certificate_file} is NOT a certificate export: {exc}")
    if checked.problem is not None:
        refuse(as_json, source, f"the certificate is NOT valid: {checked.problem}")
    kid = str(checked.certificate.get("kid"))
    facts: dict[str, Any] = {"skill_id": str(checked.skill_id), "certificate_id": checked.certificate_id, "kid": kid,
                             "issued_at": checked.certificate.get("issued_at"),
                             "certified_version": checked.certificate.get("certified_version"),
                             "standing": _standing(checked, history_file, keys, source, as_json)}
    notes = seal_note(keys, kid, listable=True) | upcoming_note(keys, kid)
    if as_json:
        print_json({"valid": True, "keys": source, **facts, **notes})
        return
    click.echo(f"certificate valid: {shown(facts['certificate_id'])} for skill {facts['skill_id']} (version "
               f"{shown(facts['certified_version'])}), issued {shown(facts['issued_at'])}, signed by kid {shown(kid)}; "
               f"{source}")
    click.echo(f"standing as of the history export: not withdrawn (head {facts['standing']['head'][:16]}…)"
               if facts["standing"] else
               "not checked whether it still stands: retiring or deleting the skill withdraws it (pass --history)")
    echo_key_notes(notes)


def _standing(checked: Any, history_file: Path | None, keys: Any, source: str, as_json: bool) -> dict[str, Any] | None:
    """With ``--history``: the head of the skill's verified chain that bears the certificate out;
    exit 4 if the chain does not verify, or does not, or has withdrawn it."""
    if history_file is None:
        return None
    document = _parsed(history_file, as_json, source)
    try:
        history = check_history(document, keys)
    except ValueError as exc:
        refuse(as_json, source, f"{history_file} is NOT a history export: {exc}")
    problem = certificate_standing(checked, history, version_contents(document))
    if problem is not None:
        refuse(as_json, source, f"the certificate is signed, but does NOT stand: {problem}")
    return {"head": history.head, "versions": history.versions}


def _parsed(path: Path, as_json: bool, source: str) -> Any:
    """A saved document, parsed as signed JSON is (a repeated member refused: a person would read
    one copy while the signature is checked over the other); exit 4 if it is not strict JSON."""
    try:
        return strict_json_loads(read_document(path))
    except ValueError as exc:
        refuse(as_json, source, f"{path} is NOT valid: not strict JSON ({exc})")
