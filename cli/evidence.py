"""``plant report`` and ``plant digest``: export signed evidence and check it.

Verification needs only public keys: a saved JWK Set (``--jwks FILE``, fully offline) or,
without one, the keys the server publishes at ``/api/v1/signing-keys`` (the output says
which). A document signed by a sealed key (the JWK Set names its seal time) that names a
later time was signed after the seal and does not verify; a report its seal does not list
(where the seal lists) does not either; any other verifies with a note saying so, as does one
signed by a key the JWK Set names as upcoming (trusted, but signing nothing until promoted) or as
retired and not sealed (trusted, though nothing dates what it signs). A report
of a run not finished (no summary) verifies too, and is said to be NOT FINAL. Each
repair record a report lists is checked too, by its own signature, the same way: one that
does not verify is named, and the report does not verify. ``--run`` pins the run a report
must be of, ``--final`` refuses one NOT FINAL, and ``--csv`` checks an (unsigned) CSV export
against the verified report
(:mod:`models.report_csv`); any mismatch does not verify. A document that does not verify
exits 4; anything that stops the check from running at all (no server, an unreadable key
file) exits 1.
"""

from __future__ import annotations

import json
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from cli.errors import PlantCliError, VerificationFailed
from cli.jobs import connect
from cli.output import json_option, print_json
from cli.work import parse_run_ref, resolve_run
from models.canonical import aware_time, strict_json_loads, visible_text
from models.errors import PlantError
from models.jws import published_as_retired, published_as_upcoming, seal_lists, sealed_at, signed_after_its_seal
from models.keys import replace_file
from models.ledger_digest import digest_problem
from models.report_csv import csv_problem
from models.reports import CSV_COLUMNS, repairs_not_verified, verify_report_document

REPORT_FORMATS = ("json", "csv", "html")
jwks_option = click.option(
    "--jwks", "jwks_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Published public keys saved from GET /api/v1/signing-keys (plant signing-keys list --json); "
         "without it the server's keys are fetched.",
)


def verification_keys(jwks_file: Path | None) -> tuple[dict[str, Any], str]:
    """The JWK Set to verify with and a phrase saying where it came from."""
    if jwks_file is not None:
        try:
            jwks = strict_json_loads(jwks_file.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise PlantCliError(f"cannot read {jwks_file} as a JWK Set: {exc}") from exc
        return _key_set(jwks, jwks_file), f"offline, keys from {jwks_file}"
    client = connect()
    where = client.url("/signing-keys")
    return _key_set(client.get("/signing-keys"), where), f"keys fetched from {where}"


def _key_set(jwks: Any, where: Any) -> dict[str, Any]:
    """``jwks`` if it is a JWK Set; else the check cannot run (exit 1), whether the set came
    from a file or the server: it is not the document that failed."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise PlantCliError(f"{visible_text(str(where))} is not a JWK Set (an object with a 'keys' list)")
    return jwks


def save_evidence(path: Path, content: bytes) -> None:
    """Evidence kept in a file is replaced whole: an export cut short (Ctrl-C, a full disk)
    leaves the earlier copy, never a half-written one that would then fail to verify. The
    file a symlink names is the one replaced, with its mode kept; a device or pipe named
    with -o is written to as it is."""
    target = path.resolve() if path.is_symlink() else path
    if target.exists() and not target.is_file():
        target.write_bytes(content)
    else:
        replace_file(target, content, mode=stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o644)


def export_document(document: Any, output: Path | None, as_json: bool, facts: Callable[[], dict[str, Any]],
                    said: Callable[[dict[str, Any]], str]) -> None:
    """An exported JSON ``document`` printed to stdout, or, with ``output``, kept there indented
    (:func:`save_evidence`) and what was written told: ``facts()`` as JSON with ``--json``, else
    ``said(facts())``, one line."""
    if output is None:
        print_json(document)
        return
    save_evidence(output, (json.dumps(document, indent=2) + "\n").encode())
    written = facts()
    if as_json:
        print_json(written)
    else:
        click.echo(said(written))


@click.group()
def report() -> None:
    """Signed audit reports: export one, verify a saved one."""


@report.command("export")
@click.argument("run_ref", metavar="RUN", callback=lambda _ctx, _param, value: parse_run_ref(value))
@click.option("--format", "fmt", type=click.Choice(REPORT_FORMATS), default="json", show_default=True,
              help="json: the signed report; csv: the findings; html: a readable report.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write it (default audit-<run>.<format>; '-' for stdout).")
@json_option
def export_report(run_ref: str, fmt: str, output: Path | None, as_json: bool) -> None:
    """Export the report of audit RUN (a run id, or 'latest')."""
    if as_json and str(output) == "-":
        raise click.UsageError("--json and -o - would both write to stdout")
    client = connect()
    run_id = resolve_run(client, run_ref)
    if fmt == "html":
        body = client.download(f"/audit/runs/{run_id}/report.html")
    else:
        body = client.download("/audit/export", run_id=run_id, format=fmt)
    if str(output) == "-":
        click.get_binary_stream("stdout").write(body)
        return
    path = output or Path(f"audit-{run_id}.{fmt}")
    save_evidence(path, body)
    if as_json:
        print_json({"run_id": run_id, "format": fmt, "file": str(path), "bytes": len(body)})
    else:
        click.echo(f"wrote the {fmt} report of run {shown(run_id)} to {path} ({len(body)} bytes)")


@report.command("verify")
@click.argument("report_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@jwks_option
@click.option("--run", "expected_run", type=click.UUID,
              help="The run the report must be of: a valid report of another run exits 4.")
@click.option("--final", "require_final", is_flag=True,
              help="The report must be of a finished run: a valid NOT FINAL one (a running run's snapshot) exits 4.")
@click.option("--csv", "csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A CSV export to check against the report: it must hold exactly the report's findings, in order.")
@json_option
def verify_report_file(report_file: Path, jwks_file: Path | None, expected_run: uuid.UUID | None,
                       require_final: bool, csv_file: Path | None, as_json: bool) -> None:
    """Check a saved JSON report's signature, and each repair record's it lists (and with --run that it is of
    that run, --final that the run had finished, --csv that a CSV export holds its findings); exit 4 if one
    does not verify."""
    keys, source = verification_keys(jwks_file)
    document = read_document(report_file)
    try:
        checked = verify_report_document(document, keys)
    except (PlantError, ValueError, KeyError, TypeError) as exc:
        refuse(as_json, source, f"report signature is NOT valid: {exc}{_csv_hint(document)}")
    verified, report_body = checked.signature, checked.report
    _check_pinned(report_body, expected_run=expected_run, require_final=require_final, csv_file=csv_file,
                  as_json=as_json, source=source)
    notes = seal_note(keys, verified.kid, listable=True) | upcoming_note(keys, verified.kid)
    run = report_body.get("run")
    run = run if isinstance(run, dict) else {}
    findings = report_body.get("findings")
    summary = run.get("summary") if isinstance(run.get("summary"), dict) else run
    left_out = summary.get("findings_left_out")
    repairs, forged = repairs_not_verified(report_body, keys)
    refusal = (f"{len(forged)} of the {repairs} repair record(s) the report lists do NOT verify "
               f"(ids {', '.join(map(str, forged))}): the report's signature vouches only that they were listed") if forged else None
    facts = {"valid": refusal is None, "kid": verified.kid, "alg": verified.alg, "keys": source,
             "run_id": run.get("id"), "status": run.get("status"), "finished_at": run.get("finished_at"),
             "final": _final(run),
             "findings": len(findings) if isinstance(findings, list) else 0,
             "findings_left_out": left_out.get("count", 0) if isinstance(left_out, dict) else 0,
             "repairs": repairs, "repairs_not_verified": forged, **({"csv": str(csv_file)} if csv_file else {}),
             **notes, **({"error": refusal} if refusal else {})}
    if as_json:
        print_json(facts)
    else:
        _echo_report_facts(facts, source)
        echo_key_notes(notes)
    if refusal is not None:
        raise VerificationFailed(visible_text(refusal))


def _echo_report_facts(facts: dict[str, Any], source: str) -> None:
    click.echo(f"report signature valid: signed by kid {shown(facts['kid'])} ({shown(facts['alg'])}); {source}")
    finished = f"finished {shown(facts['finished_at'])}" if facts["finished_at"] is not None else "not finished"
    click.echo(f"run {shown(facts['run_id'])}: {shown(facts['status'])}, {finished}; {facts['findings']} finding(s)")
    if not facts["final"]:
        click.echo("  NOT FINAL: the run had not finished when this report was exported (it has no summary): its "
                   "findings are those so far and will change; export it again once the run has finished")
    if facts["findings_left_out"]:
        click.echo(f"  {shown(facts['findings_left_out'])} of them left out of the run's counts: no signature of Plant's over "
                   "the run's record covers them (its audit-record-invalid findings say which)")
    if "csv" in facts:
        click.echo(f"CSV export {shown(facts['csv'])} holds exactly the report's {facts['findings']} finding(s), in order")
    if facts["repairs"]:
        verified = facts["repairs"] - len(facts["repairs_not_verified"])
        click.echo(f"{facts['repairs']} repair record(s) listed, {verified} of them verified by their own signature")
    for record_id in facts["repairs_not_verified"]:
        click.echo(f"  repair record {shown(record_id)} does NOT verify: not signed by a published key as it reads, "
                   "or signed after its key's seal")


@click.group()
def digest() -> None:
    """The signed ledger digest: every entity's chain head under one signature."""


@digest.command("export")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write it here (default: stdout).")
@click.option("--leaves", is_flag=True, help="Include every entity's head, so an audit can name what changed.")
@json_option
def export_digest(output: Path | None, leaves: bool, as_json: bool) -> None:
    """Export a signed digest of the ledger now: keep it outside Plant."""
    document = connect().get("/ledger/digest", leaves="true" if leaves else None)
    export_document(document, output, as_json, lambda: {
        "file": str(output), "entity_count": document["entity_count"], "as_of": document["as_of"],
        "heads_root": document["heads_root"], "kid": document["kid"], "leaves": "leaves" in document,
    }, lambda facts: (f"wrote the ledger digest of {shown(facts['entity_count'])} entities as of "
                      f"{shown(facts['as_of'])} to {output} (root {shown(facts['heads_root'])[:16]}…, "
                      f"kid {shown(facts['kid'])})"))


@digest.command("verify")
@click.argument("digest_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@jwks_option
@json_option
def verify_digest_file(digest_file: Path, jwks_file: Path | None, as_json: bool) -> None:
    """Check a saved digest's signature (and its leaves, if any); exit 4 if it does not verify."""
    keys, source = verification_keys(jwks_file)
    document = _verified_digest(digest_file, keys, source, as_json)
    notes = seal_note(keys, document["kid"], listable=False) | upcoming_note(keys, document["kid"])
    facts = {"valid": True, "kid": document["kid"], "keys": source, "entity_count": document["entity_count"],
             "as_of": document["as_of"], "heads_root": document["heads_root"], "leaves": "leaves" in document, **notes}
    if as_json:
        print_json(facts)
        return
    click.echo(f"ledger digest valid: {facts['entity_count']} entities as of {shown(facts['as_of'])}, "
               f"signed by kid {shown(facts['kid'])}; {source}")
    echo_key_notes(notes)


def _verified_digest(digest_file: Path, keys: dict[str, Any], source: str, as_json: bool) -> dict[str, Any]:
    """The saved digest, verified; or exit 4 saying why it does not verify."""
    try:
        # Whitespace is free (the export is indented), but a repeated member is not: the
        # signature would be checked over one copy while a person reads the other.
        document = strict_json_loads(read_document(digest_file))
    except ValueError as exc:
        refuse(as_json, source, f"ledger digest is NOT valid: not strict JSON ({exc})")
    problem = digest_problem(document, keys) or signed_after_its_seal(keys, document["kid"], aware_time(document["as_of"]))
    if problem is not None:
        refuse(as_json, source, f"ledger digest is NOT valid: {problem}")
    return document  # type: ignore[return-value]  # digest_problem: a dict of the signed members


def digest_with_its_leaves(digest_file: Path, keys: dict[str, Any], source: str, as_json: bool) -> dict[str, Any]:
    """The saved digest, verified, with the leaves a chain is checked against; or exit 4."""
    document = _verified_digest(digest_file, keys, source, as_json)
    if "leaves" not in document:
        refuse(as_json, source, f"{digest_file} has no leaves: export the digest with --leaves to check a chain against it")
    return document


def _check_pinned(report_body: dict[str, Any], *, expected_run: uuid.UUID | None, require_final: bool,
                  csv_file: Path | None, as_json: bool, source: str) -> None:
    """Refuse (exit 4) a report that verified but is not of ``expected_run``, or not final when
    ``require_final``, or a CSV export that does not hold exactly its findings: not the
    evidence that was asked for."""
    run = report_body.get("run") if isinstance(report_body.get("run"), dict) else {}
    if expected_run is not None and run.get("id") != str(expected_run):
        refuse(as_json, source, f"the report is signed, but it is the report of run {run.get('id')}, not of run "
                                 f"{expected_run}")
    if require_final and not _final(run):
        refuse(as_json, source, f"the report is signed, but NOT FINAL: run {run.get('id')} had not finished when it "
                                 "was exported (its findings are those so far); export it again once the run has finished")
    if csv_file is not None:
        problem = csv_problem(read_document(csv_file), report_body)
        if problem is not None:
            refuse(as_json, source, f"{csv_file} is NOT the CSV export of this report: {problem}")


def _final(run: dict[str, Any]) -> bool:
    """Whether a report's run had finished when it was exported: Plant's signed close gave it a summary."""
    return isinstance(run.get("summary"), dict) and run.get("finished_at") is not None


def _csv_hint(document: bytes) -> str:
    """For a CSV export given as the report: it carries no signature; the JSON one vouches for it."""
    if document.startswith(",".join(CSV_COLUMNS).encode()):
        return (" (this is a CSV export, which is not signed: verify the run's JSON export, and the CSV against it "
                "with --csv)")
    return ""


def read_document(path: Path) -> bytes:
    """The bytes of the document to check; a file that cannot be read (gone, a directory
    or device by now, no permission) stops the check: one line, exit 1."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PlantCliError(f"cannot read {path}: {exc.strerror or exc}") from exc


def shown(value: Any) -> str:
    """Text a document or the server supplies, as printed for a person: control codes escaped, so a
    crafted value cannot rewrite the line or hide what follows (``--json`` keeps the data)."""
    return visible_text(str(value))


def seal_note(keys: Any, kid: str, *, listable: bool) -> dict[str, Any]:
    """For a document that verified though its key is sealed (so it names no time after the
    seal, and a report is on the seal's list where the seal lists), ``{"sealed_at",
    "seal_lists_it"}`` to show with it; seals list no digest."""
    sealed = sealed_at(keys, kid)
    if sealed is None:
        return {}
    return {"sealed_at": sealed.isoformat(), "seal_lists_it": listable and seal_lists(keys, kid)}


def upcoming_note(keys: Any, kid: str) -> dict[str, Any]:
    """``{"upcoming": True}`` for a document signed by a key the set names as upcoming: it
    verifies (upcoming keys are trusted, so that a rolling rotation has no window), but such a
    key signs nothing until a rotation makes it active; ``{"retired": True}`` for one signed by
    a key it names as retired and not sealed (a sealed one has its own note): trusted for what
    it signed before the rotation, but nothing dates the document."""
    if published_as_upcoming(keys, kid):
        return {"upcoming": True}
    return {"retired": True} if sealed_at(keys, kid) is None and published_as_retired(keys, kid) else {}


def echo_key_notes(notes: dict[str, Any]) -> None:
    if notes.get("upcoming"):
        click.echo("note: the key set names that key as upcoming (published ahead of a rotation, it signs nothing "
                   "until a rotation makes it active): this document was signed by a process already promoted to "
                   "it, while the process that served these keys was not, or by someone holding its staged private key")
    if notes.get("retired"):
        click.echo("note: the key set names that key as retired and not sealed: it verifies what it signed before it "
                   "was rotated out, but whoever holds a copy of its private key can still sign documents it verifies, "
                   "so this one is evidence only if you have held it since before the rotation")
    if "sealed_at" not in notes:
        return
    if notes["seal_lists_it"]:
        click.echo(f"note: that key was sealed at {notes['sealed_at']}, and its seal lists this signature: "
                   "it was made before the seal")
        return
    click.echo(f"note: that key was sealed at {notes['sealed_at']}, and its seal does not list this document: "
               "whoever holds a copy of its private key can still sign backdated ones, so this one is evidence only "
               "if you have held it since before then")


def refuse(as_json: bool, source: str, message: str) -> NoReturn:
    if as_json:  # print_json escapes what a terminal acts on as JSON does: the data stays the data
        print_json({"valid": False, "keys": source, "error": message})
    raise VerificationFailed(visible_text(message))  # for a person: it may quote the document
