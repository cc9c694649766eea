"""``plant certificate``: export a skill's signed certificate, and check a saved one offline.

Verification needs only public keys, as ``plant report verify`` and ``plant history verify``
do (:mod:`cli.evidence`: the same key loading, refusals and key notes): a saved JWK Set
(``--jwks FILE``) or, without one, the keys the server publishes. ``--skill`` pins the skill
the certificate must be of; ``--history`` (the skill's ``plant history export``) checks, as of
that export, that the certificate still stands: retiring or deleting the skill withdraws it,
which no signature on the certificate can show. A history export is neither signed as a whole
nor dated: one cut short before the retiring version verifies too. So its standing is only as
fresh as an export the auditor fetched themselves, unless ``--digest`` (a ledger digest exported
with ``--leaves``, checked as ``plant history verify --digest`` checks it) dates it: the
history's head must then be the digest's head for the skill, and it stands as of the digest's
``as_of``. A certificate that does not verify, or does not stand, exits 4; anything that stops
the check from running (an unreadable key file, no server) exits 1 (:mod:`models.certificate_check`).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import click

from cli.errors import PlantCliError
from cli.evidence import (
    digest_with_its_leaves, echo_key_notes, export_document, jwks_option, read_document, refuse, seal_note, shown,
    upcoming_note, verification_keys,
)
from cli.jobs import connect
from cli.output import json_option, print_json
from cli.work import resolve_skill
from models.canonical import strict_json_loads
from models.certificate_check import certificate_export, certificate_standing, check_certificate, version_contents
from models.history_check import check_history, digest_dates_head


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
    export_document(document, output, as_json, lambda: {
        "file": str(output), "skill_id": found["id"], "certificate_id": found["certificate"].get("certificate_id"),
        "status": found.get("status"),
    }, lambda facts: (f"wrote certificate {shown(facts['certificate_id'])} of skill {facts['skill_id']} "
                      f"(now {shown(facts['status'])}) to {output}"))


@certificate.command("verify")
@click.argument("certificate_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@jwks_option
@click.option("--skill", "expected_skill", type=click.UUID,
              help="The skill the certificate must be of: a valid certificate of another skill exits 4.")
@click.option("--history", "history_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The skill's history export: the certificate must be recorded there and not withdrawn since.")
@click.option("--digest", "digest_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A ledger digest exported with --leaves (with --history): the history's head must be the "
                   "digest's head for the skill, so that it stands as of the digest.")
@json_option
def verify_certificate_file(certificate_file: Path, jwks_file: Path | None, expected_skill: uuid.UUID | None,
                            history_file: Path | None, digest_file: Path | None, as_json: bool) -> None:
    """Check a saved certificate's signature for its skill (with --skill that it is that skill's, with --history
    that the skill's chain records it and has not withdrawn it, with --digest that the chain is the skill's as of
    that digest); exit 4 if it does not verify."""
    if digest_file is not None and history_file is None:
        raise click.UsageError("--digest dates a --history: pass both")
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
                             "standing": _standing(checked, history_file, digest_file, keys, source, as_json)}
    notes = seal_note(keys, kid, listable=True) | upcoming_note(keys, kid)
    if as_json:
        print_json({"valid": True, "keys": source, **facts, **notes})
        return
    click.echo(f"certificate valid: {shown(facts['certificate_id'])} for skill {facts['skill_id']} (version "
               f"{shown(facts['certified_version'])}), issued {shown(facts['issued_at'])}, signed by kid {shown(kid)}; "
               f"{source}")
    click.echo(_standing_line(facts["standing"]))
    echo_key_notes(notes)


UNDATED = ("only as fresh as the history export: it is neither signed as a whole nor dated, and one cut short "
           "before a retiring version verifies too, so it shows standing only if you fetched it yourself "
           "(pass --digest to date it)")


def _standing_line(standing: dict[str, Any] | None) -> str:
    if standing is None:
        return "not checked whether it still stands: retiring or deleting the skill withdraws it (pass --history)"
    head = f"not withdrawn (head {standing['head'][:16]}…)"
    if standing["as_of"] is not None:
        return f"standing as of {shown(standing['as_of'])} (the digest's date): {head}"
    return f"standing as of the history export: {head}; {UNDATED}"


def _standing(checked: Any, history_file: Path | None, digest_file: Path | None, keys: Any, source: str,
              as_json: bool) -> dict[str, Any] | None:
    """With ``--history``: the head of the skill's verified chain that bears the certificate out,
    and with ``--digest`` the digest's ``as_of`` that dates that head; exit 4 if the chain does not
    verify, or does not bear it out, or has withdrawn it, or is not the skill's chain as of the digest."""
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
    standing = {"head": history.head, "versions": history.versions, "as_of": None}
    if digest_file is None:
        return standing | {"note": UNDATED}
    digest = digest_with_its_leaves(digest_file, keys, source, as_json)
    if (problem := digest_dates_head(history, digest)) is not None:
        refuse(as_json, source, f"the certificate's standing is NOT dated by {digest_file}: {problem}")
    return standing | {"as_of": digest["as_of"]}


def _parsed(path: Path, as_json: bool, source: str) -> Any:
    """A saved document, parsed as signed JSON is (a repeated member refused: a person would read
    one copy while the signature is checked over the other); exit 4 if it is not strict JSON."""
    try:
        return strict_json_loads(read_document(path))
    except ValueError as exc:
        refuse(as_json, source, f"{path} is NOT valid: not strict JSON ({exc})")
