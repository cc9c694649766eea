"""``plant certify``, ``plant assign`` and ``plant audit``: start the registry's work as jobs.

Names are resolved here, before anything starts: a skill by id or ``skill_key``, a team by
id or name. Each command prints the job it started, or with ``--wait`` follows it to the
end (see :mod:`cli.jobs`).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import click

from cli.client import PlantClient
from cli.errors import PlantCliError
from cli.jobs import connect, finish_started_job, idempotency_option, wait_option
from cli.output import json_option, print_json, print_table
from models.canonical import strict_json_loads
from models.entities import EntityType
from models.ledger_digest import MAX_DIGEST_LEAVES


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def resolve_skill(client: PlantClient, ref: str) -> dict[str, Any]:
    """The skill with id ``ref``, else the one whose ``skill_key`` is ``ref`` (keys are unique)."""
    if _is_uuid(ref):
        return client.get(f"/genesis/skills/{ref}")
    # The list filters only on category, status and industry, and search ranks by meaning,
    # so an exact key is found by walking the list.
    for skill in client.items("/genesis/skills"):
        if skill["skill_key"] == ref:
            return skill
    raise PlantCliError(f"no skill has id or skill_key {ref!r}")


def resolve_team(client: PlantClient, ref: str) -> dict[str, Any]:
    """The team with id ``ref``, else the one named ``ref`` (exactly, else ignoring case)."""
    if _is_uuid(ref):
        return client.get(f"/teams/{ref}")
    teams = [t for t in client.items("/teams") if isinstance(t, dict) and isinstance(t.get("name"), str)]
    exact = [t for t in teams if t["name"] == ref] or [t for t in teams if t["name"].casefold() == ref.casefold()]
    if len(exact) == 1:
        return exact[0]
    if exact:
        raise PlantCliError(f"{len(exact)} teams are named {ref!r}; give the team id")
    raise PlantCliError(f"no team has id or name {ref!r}")


@click.command()
@click.argument("skill")
@click.option("--notes", help="Governance notes recorded with the certification.")
@wait_option
@idempotency_option
@json_option
def certify(skill: str, notes: str | None, wait: bool, idempotency_key: str | None, as_json: bool) -> None:
    """Certify SKILL (its id or skill_key): gates, then a signed certificate or a rejection."""
    client = connect()
    skill_id = resolve_skill(client, skill)["id"]
    job = client.start_job(f"/genesis/skills/{skill_id}/certify", {"notes": notes} if notes else {},
                      idempotency_key=idempotency_key)
    finish_started_job(client, job, wait=wait, as_json=as_json)


@click.command()
@click.argument("agents", metavar="[AGENT]...", nargs=-1, type=click.UUID)
@click.option("--team", "team_ref", metavar="TEAM", help="Team id or name; omit to let Plant choose the best team.")
@click.option("--all-unassigned", is_flag=True, help="Place every agent without a team with one optimal plan.")
@wait_option
@idempotency_option
@json_option
def assign(agents: tuple[uuid.UUID, ...], team_ref: str | None, all_unassigned: bool, wait: bool,
           idempotency_key: str | None, as_json: bool) -> None:
    """Assign AGENT (an id) to a team: --team T, or the most similar eligible team.

    Several AGENTs, or --all-unassigned, are placed together by one optimal plan.
    """
    if bool(agents) == all_unassigned:
        raise click.UsageError("give AGENT id(s) or --all-unassigned (not both)")
    if team_ref and len(agents) != 1:
        raise click.UsageError("--team goes with exactly one AGENT")
    client = connect()
    if len(agents) == 1:
        team_id = resolve_team(client, team_ref)["id"] if team_ref else None
        body = {"team_id": team_id} if team_id else {}
        job = client.start_job(f"/agents/{agents[0]}/assign-team", body, idempotency_key=idempotency_key)
    else:
        body = {"all_unassigned": True} if all_unassigned else {"agent_ids": [str(a) for a in agents]}
        job = client.start_job("/agents/assign-teams", body, idempotency_key=idempotency_key)
    finish_started_job(client, job, wait=wait, as_json=as_json)


@click.group()
def audit() -> None:
    """Compliance audits: run one, list runs, read findings."""


@audit.command("run")
@click.option("--type", "entity_type", type=click.Choice([t.value for t in EntityType]), help="Only this entity type.")
@click.option("--entity-id", "entity_ids", multiple=True, metavar="ID", help="Only this entity (repeatable).")
@click.option("--all-signatures", is_flag=True, help="Verify every version's signature, not only the heads'.")
@click.option("--against", "digest_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A ledger digest kept outside Plant: with its leaves (plant digest export --leaves) rollbacks and "
                   "rewrites are named per entity; without them (plain plant digest export), or with more than the "
                   f"API takes ({MAX_DIGEST_LEAVES:,}: they are left out, said on stderr), any is one ledger-root-mismatch.")
@wait_option
@idempotency_option
@json_option
def run_audit(entity_type: str | None, entity_ids: tuple[str, ...], all_signatures: bool, digest_file: Path | None,
              wait: bool, idempotency_key: str | None, as_json: bool) -> None:
    """Start a compliance audit; with --wait print its summary when it ends."""
    body: dict[str, Any] = {
        "scope": {k: v for k, v in (("entity_type", entity_type), ("entity_ids", list(entity_ids) or None)) if v},
        "verify_signatures": "all" if all_signatures else "heads",
    }
    if digest_file is not None:
        body["against_digest"] = _against(_read_json_file(digest_file))
    client = connect()
    job = client.start_job("/audit/run", body, idempotency_key=idempotency_key)
    finish_started_job(client, job, wait=wait, as_json=as_json)


@audit.command("runs")
@click.option("--limit", type=click.IntRange(min=1), default=10, show_default=True)
@json_option
def list_runs(limit: int, as_json: bool) -> None:
    """Audit runs, newest first."""
    runs = list(connect().items("/audit/runs", limit=limit))
    if as_json:
        print_json({"items": runs})
        return
    print_table(runs, [
        ("RUN", lambda r: r["id"]), ("STATUS", lambda r: r["status"]), ("ENTITIES", lambda r: r["entities_total"]),
        ("NON-COMPLIANT", lambda r: (r.get("summary") or {}).get("non_compliant")),
        ("FINDINGS", lambda r: (r.get("summary") or {}).get("findings")), ("CREATED", lambda r: r["created_at"]),
    ])


@audit.command("findings")
@click.argument("run_ref", metavar="RUN", callback=lambda _ctx, _param, value: parse_run_ref(value))
@click.option("--code", help="Only findings with this code, e.g. row-content-mismatch.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@json_option
def list_findings(run_ref: str, code: str | None, limit: int, as_json: bool) -> None:
    """The findings of audit RUN (a run id, or 'latest')."""
    client = connect()
    run_id = resolve_run(client, run_ref)
    findings = list(client.items(f"/audit/runs/{run_id}/findings", limit=limit, code=code))
    if as_json:
        print_json({"run_id": run_id, "items": findings})
        return
    print_table(findings, [
        ("CODE", lambda f: f["code"]), ("SEVERITY", lambda f: f["severity"]), ("TYPE", lambda f: f["entity_type"]),
        ("ENTITY", lambda f: f["entity_id"]), ("VERSION", lambda f: f["version"]), ("DETAIL", lambda f: f["detail"]),
    ])


def parse_run_ref(value: str) -> str:
    """``latest`` or a run id; anything else would be put in the URL's path as it is."""
    if value == "latest":
        return value
    if not _is_uuid(value):
        raise click.BadParameter(f"{value!r} is neither a run id (a UUID) nor 'latest'")
    return str(uuid.UUID(value))


def resolve_run(client: PlantClient, ref: str) -> str:
    """A run id as given, or the newest run's id for ``latest``."""
    if ref != "latest":
        return ref
    newest = next(client.items("/audit/runs", limit=1), None)
    if newest is None:
        raise PlantCliError("there is no audit run yet (plant audit run --wait)")
    if not _is_uuid(str(newest.get("id"))):  # it goes into the next request's path
        raise PlantCliError("the server's newest audit run has no run id (a UUID): is PLANT_URL a Plant API?")
    return str(uuid.UUID(str(newest["id"])))


def _against(digest: Any) -> Any:
    """The digest to hand back: without its leaves when it lists more than the API takes
    (its signature does not cover them), so a large registry is compared by its root and
    not refused with a 422; said on stderr."""
    leaves = digest.get("leaves") if isinstance(digest, dict) else None
    if not isinstance(leaves, list) or len(leaves) <= MAX_DIGEST_LEAVES:
        return digest
    click.echo(f"plant: the digest lists {len(leaves):,} leaves, more than the API takes ({MAX_DIGEST_LEAVES:,}): "
               "handing back its root only, so a rollback or rewrite since is reported as one ledger-root-mismatch, "
               "not per entity", err=True)
    return {name: value for name, value in digest.items() if name != "leaves"}


def _read_json_file(path: Path) -> Any:
    try:
        return strict_json_loads(path.read_bytes())  # a repeated member is refused, not silently resolved
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PlantCliError(f"cannot read {path} as JSON: {exc}") from exc
