"""How ``plant`` commands print: JSON for scripts (``--json``), tables and short lines for people.

A job's outcome gets one line (or a few) per kind, e.g. the certificate id of a
certification or the counts of an audit; anything unknown is shown as compact JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import click

from models.canonical import visible_text

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of text.")


def print_json(value: Any) -> None:
    click.echo(terminal_safe_json(json.dumps(value, indent=2, ensure_ascii=False)))


def terminal_safe_json(text: str) -> str:
    """JSON ``text`` with every character a terminal could act on written as a ``\\uXXXX``
    escape: JSON escapes only U+0000-U+001F itself, which leaves DEL, C1 controls (U+009B is
    ESC [ in one character), bidi overrides and other format characters raw, and any write
    key can put them in a name. Outside its strings the text holds only printable ASCII and
    newlines, so what is escaped is always inside a string and the value is unchanged."""
    if text.replace("\n", "").isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == "\n" else _json_escape(ch) for ch in text)


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # beyond the BMP: a UTF-16 surrogate pair, as JSON writes it (RFC 8259 section 7)
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def print_table(rows: Iterable[dict[str, Any]], columns: Sequence[tuple[str, Callable[[dict[str, Any]], Any]]]) -> None:
    """Left-aligned columns sized to their widest cell; ``-`` for a missing value."""
    cells = [[_cell(value(row)) for _, value in columns] for row in rows]
    headers = [header for header, _ in columns]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    for line in (headers, *cells):
        click.echo("  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    """A table cell; text from the server is shown with control codes escaped (a name could
    otherwise rewrite the terminal: any write key can set one)."""
    if value is None or value == "":
        return "-"
    if isinstance(value, (list, tuple)):
        return visible_text(",".join(str(v) for v in value)) or "-"
    return visible_text(str(value))


def progress_text(job: dict[str, Any]) -> str:
    progress = job.get("progress") or {}
    done, total = progress.get("done", 0), progress.get("total")
    return f"{done}/{total}" if total else str(done)


def job_line(job: dict[str, Any]) -> str:
    """``<id>  <kind>  <status>`` for a job just started."""
    return visible_text(f"job {job['id']}  {job['kind']}  {job['status']}")


def describe_job(job: dict[str, Any]) -> list[str]:
    """The lines ``plant jobs show`` prints."""
    lines = [
        f"id        {job['id']}", f"kind      {job['kind']}", f"status    {job['status']}",
        f"progress  {progress_text(job)}" + (f"  {job['progress']['message']}" if job["progress"].get("message") else ""),
        f"attempts  {job.get('attempts', '-')}", f"asked by  {job.get('requested_by') or '-'}",
        f"created   {job.get('created_at') or '-'}", f"started   {job.get('started_at') or '-'}",
        f"finished  {job.get('finished_at') or '-'}", f"params    {compact(job.get('params'))}",
    ]
    if job.get("cancelled_by"):
        lines.insert(5, f"cancel by {job['cancelled_by']}")
    if job.get("error"):
        lines.append(f"error     {compact(job['error'])}")
    if job.get("result") is not None:
        lines += ["result", *("  " + line for line in outcome_lines(job))]
    return [visible_text(line) for line in lines]


def outcome_lines(job: dict[str, Any]) -> list[str]:
    """What a succeeded job achieved, in words; as compact JSON when its kind is not known, or
    its result is not the object that kind returns (the API serves a row edited through SQL as
    it is stored: any JSON value, an object without the members its task writes). The shape is
    checked before the words are made, so that a mistake in making them raises."""
    describe, fits, raw = _OUTCOMES.get(job["kind"]), _SHAPES.get(job["kind"]), job.get("result")
    if describe is None or fits is None or not isinstance(raw, dict) or not fits(raw):
        return [visible_text(compact({} if raw is None else raw))]
    return [visible_text(line) for line in describe(raw)]


def _result_of(job: dict[str, Any]) -> dict[str, Any]:
    """A job's result as the outcome's readers take it: an object, empty for anything else."""
    result = job.get("result")
    return result if isinstance(result, dict) else {}


def _certification(result: dict[str, Any]) -> list[str]:
    if result.get("status") == "certified":
        certificate = result["certificate"]
        return [f"certified: {certificate['certificate_id']} (skill {result['skill_id']}, version {result['version']}, "
                f"signed by {certificate['kid']})"]
    gates = [f"{gate['gate']} ({gate.get('detail')})" for gate in result.get("failed_gates") or []]
    return [f"rejected: skill {result.get('skill_id')} failed {len(gates)} gate(s)", *(f"  - {g}" for g in gates)]


def _assignment(result: dict[str, Any]) -> list[str]:
    previous = result.get("previous_team_id")
    lines = [f"assigned: agent {result['agent_id']} to team {result['team_id']}"
             + (f" (was {previous})" if previous else "")]
    lines += [f"  candidate {c['name']}: score {c['score']}, {c['free_seats']} free seat(s)" for c in result.get("candidates") or []]
    return lines


def _bulk_assignment(result: dict[str, Any]) -> list[str]:
    lines = [f"placed {result['placed']} of {result['requested']} agent(s); {result['not_placed']} not placed "
             f"(total similarity {result.get('total_similarity')}, {result.get('method')})"]
    reasons: dict[str, int] = {}
    for unplaced in result.get("unplaced") or []:
        reasons[unplaced["reason"]] = reasons.get(unplaced["reason"], 0) + 1
    lines += [f"  not placed, {reason}: {count}" for reason, count in sorted(reasons.items())]
    return lines


def _audit(summary: dict[str, Any]) -> list[str]:
    lines = [
        f"audit run {summary['run_id']}: {summary['total_entities']} entities, {summary['compliant']} compliant, "
        f"{summary['non_compliant']} non-compliant; {summary['versions_verified']} versions verified "
        f"(signatures: {summary.get('signatures')}) in {summary.get('duration_seconds')} s",
        f"findings: {summary['findings']}",
    ]
    lines += [f"  {code}: {count}" for code, count in (summary.get("by_code") or {}).items()]
    return lines


def unmet_outcome(job: dict[str, Any]) -> str | None:
    """Why a succeeded job did not do what was asked, if it did not: a skill rejected, agents
    left unplaced, an audit that found non-compliant entities or run-level findings (warnings
    alone are met)."""
    result, kind = _result_of(job), job["kind"]
    if kind == "skill.certify" and result.get("status") != "certified":
        return f"skill {result.get('skill_id')} was {result.get('status', 'not certified')}"
    if kind == "agents.assign_teams" and result.get("not_placed"):
        return f"{result['not_placed']} of {result.get('requested')} agent(s) not placed"
    if kind == "audit.run" and (result.get("non_compliant") or result.get("run_level_findings")):
        run_level = result.get("run_level_findings") or []
        return (f"audit run {result.get('run_id')} found {result.get('non_compliant', 0)} non-compliant entit(y/ies)"
                + (f" and run-level findings {', '.join(run_level)}" if run_level else ""))
    return None


def _has(value: Any, *members: str) -> bool:
    return isinstance(value, dict) and set(members) <= value.keys()


def _objects_with(value: Any, *members: str) -> bool:
    """Whether ``value`` lists nothing (the formatters read ``value or []``) or is a list of
    objects each holding ``members``."""
    return not value or (isinstance(value, list) and all(_has(item, *members) for item in value))


def _fits_certification(result: dict[str, Any]) -> bool:
    if result.get("status") == "certified":
        return _has(result, "skill_id", "version") and _has(result.get("certificate"), "certificate_id", "kid")
    return _objects_with(result.get("failed_gates"), "gate")


def _fits_bulk_assignment(result: dict[str, Any]) -> bool:
    unplaced = result.get("unplaced")  # counted by reason, and the reasons sorted: text alone
    return (_has(result, "placed", "requested", "not_placed") and _objects_with(unplaced, "reason")
            and all(isinstance(item["reason"], str) for item in unplaced or []))


# What each formatter reads unchecked: a result without it is shown as it is stored.
_SHAPES: dict[str, Callable[[dict[str, Any]], bool]] = {
    "skill.certify": _fits_certification,
    "agent.assign_team": lambda result: (_has(result, "agent_id", "team_id")
                                         and _objects_with(result.get("candidates"), "name", "score", "free_seats")),
    "agents.assign_teams": _fits_bulk_assignment,
    "audit.run": lambda result: (_has(result, "run_id", "total_entities", "compliant", "non_compliant",
                                      "versions_verified", "findings")
                                 and (not result.get("by_code") or isinstance(result["by_code"], dict))),
}
_OUTCOMES: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "skill.certify": _certification,
    "agent.assign_team": _assignment,
    "agents.assign_teams": _bulk_assignment,
    "audit.run": _audit,
}
