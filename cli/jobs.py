"""``plant jobs list|show|watch|cancel`` and the shared way every job-starting command ends.

An id a command puts in a URL path is taken only as a UUID (click's usage error otherwise):
``../agents/<id>/assign-team?`` as a job id would otherwise reach another endpoint, since
the HTTP client resolves dot segments and a ``?`` ends the path.

A command that starts work prints the job it got (202 from the API); with ``--wait`` it
follows the job to its end like ``plant jobs watch``, prints the outcome, and exits 3 if
the job did not succeed, 5 if it succeeded without doing what was asked (a skill rejected,
agents left unplaced, an audit finding non-compliant entities).
"""

from __future__ import annotations

import uuid
from typing import Any

import click

from cli.client import JOB_MEMBERS, PlantClient, client_config_from_environment
from cli.errors import OutcomeUnmet
from cli.output import describe_job, job_line, json_option, outcome_lines, print_json, print_table, progress_text, unmet_outcome
from cli.watch import ProgressView, follow, require_success

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")

wait_option = click.option("--wait", is_flag=True, help="Follow the job to its end; exit 3 unless it succeeds, 5 if it succeeds without doing what was asked.")
idempotency_option = click.option(
    "--idempotency-key", metavar="KEY",
    help="Send Idempotency-Key: repeating the command with the same key returns the same job. "
         "Without it each job is sent with a new key, so retrying a busy server never starts a job twice.",
)


def connect() -> PlantClient:
    """A client for the configured API, closed when the command ends."""
    return click.get_current_context().with_resource(PlantClient(client_config_from_environment()))


def print_job_line(job: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print_json(job)
    else:
        click.echo(job_line(job))


def finish_started_job(client: PlantClient, job: dict[str, Any], *, wait: bool, as_json: bool) -> dict[str, Any]:
    """Print a job just started; with ``wait`` follow it and print its outcome (or exit 3)."""
    if not wait:
        print_job_line(job, as_json=as_json)
        return job
    if not as_json:
        click.echo(job_line(job))
    return follow_to_end(client, job, as_json=as_json)


def follow_to_end(client: PlantClient, job: dict[str, Any], *, as_json: bool) -> dict[str, Any]:
    """Follow the job (a live bar unless ``as_json``), print how it ended; exit 3 unless it
    succeeded, 5 if it succeeded without doing what was asked (:func:`cli.output.unmet_outcome`)."""
    view = None if as_json else ProgressView()
    try:
        final = follow(client, job, view)
    finally:
        if view is not None:
            view.end_line()
    if as_json:
        print_json(final)
    require_success(final)
    if not as_json:
        for line in outcome_lines(final):
            click.echo(line)
    if (unmet := unmet_outcome(final)) is not None:
        raise OutcomeUnmet(f"job {final['id']} ({final['kind']}) succeeded, but {unmet}")
    return final


@click.group()
def jobs() -> None:
    """Inspect, follow and cancel jobs."""


@jobs.command("list")
@click.option("--status", type=click.Choice(JOB_STATUSES), help="Only jobs with this status.")
@click.option("--kind", help="Only jobs of this kind, e.g. audit.run.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="At most this many jobs.")
@json_option
def list_jobs(status: str | None, kind: str | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first (follows next_page_token up to --limit)."""
    items = list(connect().items("/jobs", limit=limit, status=status, kind=kind))
    if as_json:
        print_json({"items": items})
        return
    print_table(items, [
        ("ID", lambda j: j["id"]), ("KIND", lambda j: j["kind"]), ("STATUS", lambda j: j["status"]),
        ("PROGRESS", progress_text), ("ATTEMPTS", lambda j: j["attempts"]), ("CREATED", lambda j: j["created_at"]),
    ])


@jobs.command("show")
@click.argument("job_id", type=click.UUID)
@json_option
def show_job(job_id: uuid.UUID, as_json: bool) -> None:
    """Show one job: status, progress, result or error."""
    job = connect().job(job_id)
    if as_json:
        print_json(job)
        return
    for line in describe_job(job):
        click.echo(line)


@jobs.command("watch")
@click.argument("job_id", type=click.UUID)
@json_option
def watch_job(job_id: uuid.UUID, as_json: bool) -> None:
    """Follow a job with a live progress bar (rate, ETA), then print its result or error.

    Exits 0 when the job succeeded, 3 when it failed or was cancelled, and 5 when it succeeded
    without doing what was asked (a skill rejected, agents left unplaced, an audit with
    non-compliant entities).
    """
    client = connect()
    follow_to_end(client, client.job(job_id), as_json=as_json)


@jobs.command("cancel")
@click.argument("job_id", type=click.UUID)
@json_option
def cancel_job(job_id: uuid.UUID, as_json: bool) -> None:
    """Cancel a queued job now, or ask a running one to stop at its next checkpoint."""
    job = connect().post(f"/jobs/{job_id}/cancel", {}, expect=JOB_MEMBERS)
    print_job_line(job, as_json=as_json)
    if not as_json and job["status"] == "running":  # the answer alone ("running") reads as a refusal
        click.echo("cancel asked: the job stops at its next checkpoint (plant jobs watch ID to see it end)")
