"""An outside auditor's offline checks of Plant's evidence (review r151).

What ``plant report verify`` and ``plant digest verify`` accept, what they say about the key
that signed, and what they print from a document or the server: the auditor receives these
files from a company that may want to deceive, and reads the output on a terminal. Pure
CLI and library checks: keys are made here, the server (where one is needed) is an
``httpx.MockTransport``.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

import cli.jobs as cli_jobs
from cli.client import PlantClient
from cli.main import cli
from models.ledger_digest import build_digest
from models.signing import KeyRing, KeySeal
from models.key_material import generate_ed25519
from tests.report_builders import signed_report

SEALED_AT = "2026-06-01T00:00:00.000000Z"
AFTER_THE_SEAL = "2026-07-01T00:00:00Z"
EVIL = "\x1b[2K\r\x1b[1Aall clean"  # erase the line, go back to its start, up one line


pytestmark = pytest.mark.usefixtures("no_server_log_lines")


@pytest.fixture
def signer():
    return generate_ed25519()


@pytest.fixture
def sealed_ring(signer) -> KeyRing:
    """A ring in which ``signer`` is retired and was sealed at ``SEALED_AT``."""
    return KeyRing(generate_ed25519(), (signer,), (KeySeal(signer.kid, 1, "00" * 32, SEALED_AT),))


def _report(signer, **run: Any) -> bytes:
    return signed_report({"type": "plant.audit-report.v1", "findings": [], "repairs": [],
                          "run": {"id": "r", "created_at": "2026-05-01T00:00:00Z", **run}}, KeyRing(signer))


def _verify(tmp_path: Path, kind: str, document: bytes, jwks: dict[str, Any], *args: str) -> Result:
    path, jwks_file = tmp_path / f"{kind}.json", tmp_path / "jwks.json"
    path.write_bytes(document)
    jwks_file.write_text(json.dumps(jwks))
    return CliRunner().invoke(cli, [kind, "verify", str(path), "--jwks", str(jwks_file), *args])


def _entry(jwks: dict[str, Any], kid: str) -> dict[str, Any]:
    return next(jwk for jwk in jwks["keys"] if jwk.get("kid") == kid)


# --- what the verify commands print from a signed document -------------------------------------


def test_report_verify_escapes_the_left_out_count_the_report_supplies(tmp_path, signer) -> None:
    """Every other value the report supplies is printed escaped (run id, status, times); the
    count of findings left out was printed as it came, so a signed report could erase the line."""
    document = _report(signer, finished_at="2026-05-02T00:00:00Z",
                       summary={"findings_left_out": {"count": EVIL, "ids": []}})
    result = _verify(tmp_path, "report", document, KeyRing(signer).jwks())
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\r" not in result.output, repr(result.output)
    assert "\\x1b[2K\\x0d\\x1b[1Aall clean of them left out" in result.output


# --- what the export commands print from the server ---------------------------------------------

RUN_ID = "00000000-0000-4000-8000-0000000000aa"


def _server(signer) -> httpx.MockTransport:
    digest = build_digest(dt.datetime(2026, 5, 1, tzinfo=dt.UTC), [(uuid.UUID(int=1), bytes(32))], KeyRing(signer))

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/api/v1/ledger/digest":
            return httpx.Response(200, json={**digest, "kid": f"k{EVIL}", "as_of": f"2026{EVIL}"})
        if path == "/api/v1/audit/runs":
            return httpx.Response(200, json={"items": [{"id": f"{RUN_ID}{EVIL}"}], "next_page_token": None})
        if path == "/api/v1/audit/export":
            return httpx.Response(200, content=b"{}")
        return httpx.Response(404, json={"title": "Not Found"})

    return httpx.MockTransport(handle)


@pytest.mark.parametrize("args", [("digest", "export"), ("report", "export", "latest")])
def test_the_export_commands_escape_what_the_server_names(tmp_path, monkeypatch, signer, args) -> None:
    """README: text from the server is shown with control codes escaped. The exports printed
    the digest's kid and as_of, and the newest run's id, as the server sent them."""
    monkeypatch.setenv("PLANT_URL", "http://plant.invalid")
    monkeypatch.setenv("PLANT_API_KEY", "k")
    transport = _server(signer)
    monkeypatch.setattr(cli_jobs, "PlantClient", lambda config: PlantClient(config, transport=transport))
    result = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "out.json")])
    assert "\x1b" not in result.output and "\r" not in result.output, repr(result.output)
    if args[0] == "report":  # a run id that is no UUID never reaches a path, nor the output
        assert result.exit_code == 1 and "no run id (a UUID)" in result.output, result.output
        return
    assert result.exit_code == 0, result.output
    assert "\\x1b[2K" in result.output


# --- what --json prints ----------------------------------------------------------------------

# The characters JSON itself leaves unescaped (it escapes only U+0000-U+001F) that a terminal
# still acts on: DEL, the C1 control CSI (U+009B, ESC [ in one character), a bidi override
# that reverses what follows, and a tag character beyond the BMP (no glyph, hides text).
HIDDEN_IN_JSON = "r\x7f\u009b2J\u202eevil\U000e0041"


@pytest.mark.parametrize("run_id, raw", [(HIDDEN_IN_JSON, False), ("Zürich №7", True)])
def test_json_output_escapes_what_a_terminal_would_act_on_and_keeps_the_data(tmp_path, signer, run_id, raw) -> None:
    document = signed_report({"type": "plant.audit-report.v1", "findings": [], "repairs": [],
                              "run": {"id": run_id}}, KeyRing(signer))
    result = _verify(tmp_path, "report", document, KeyRing(signer).jwks(), "--json")
    assert result.exit_code == 0, result.output
    assert (run_id in result.stdout) is raw, repr(result.stdout)  # printable text beyond ASCII is left as it is
    assert not any(ch in result.stdout for ch in "\x7f\u009b\u202e\U000e0041"), repr(result.stdout)
    assert json.loads(result.stdout)["run_id"] == run_id  # the data stays the data


# --- which JWK Set entries speak for a key -------------------------------------------------------


@pytest.mark.parametrize("layout", ["entry without kid", "unsealed copy first"])
def test_a_sealed_key_s_seal_holds_however_its_jwks_entry_is_laid_out(tmp_path, signer, sealed_ring, layout) -> None:
    """``kid`` is optional in a JWK (RFC 7517 §4.5) and the key verifies without it, but the
    seal was read only from an entry naming its kid, and only from the first: a report its
    sealed key signed after the seal then verified, with no note at all. A key set merged from
    a copy saved before the seal and one after lists the key twice."""
    jwks = sealed_ring.jwks()
    sealed = _entry(jwks, signer.kid)
    if layout == "entry without kid":
        del sealed["kid"]
    else:
        jwks["keys"].insert(0, signer.public_jwk())
    document = _report(signer, finished_at=AFTER_THE_SEAL)
    refused = _verify(tmp_path, "report", document, jwks)
    assert refused.exit_code == 4, refused.output
    assert "signed after the seal" in refused.stderr
    before = _verify(tmp_path, "report", _report(signer, finished_at="2026-05-02T00:00:00Z"), jwks)
    assert before.exit_code == 0 and "note: that key was sealed at 2026-06-01" in before.output
    digest = build_digest(dt.datetime(2026, 7, 1, tzinfo=dt.UTC), [(uuid.UUID(int=1), bytes(32))], KeyRing(signer))
    assert _verify(tmp_path, "digest", json.dumps(digest).encode(), jwks).exit_code == 4


def test_a_seal_list_in_any_of_a_key_s_entries_is_held_to(tmp_path, signer, sealed_ring) -> None:
    """A listing seal's report not on the list does not verify, whichever entry of the key lists."""
    jwks = sealed_ring.jwks()
    _entry(jwks, signer.kid)["plant_sealed_signatures"] = []
    jwks["keys"].insert(0, signer.public_jwk())  # an unsealed copy of the key first
    result = _verify(tmp_path, "report", _report(signer, finished_at="2026-05-02T00:00:00Z"), jwks)
    assert result.exit_code == 4 and "does not list this signature" in result.stderr


# --- which JWKs can vouch for a signature at all ------------------------------------------------


@pytest.mark.parametrize("edit", [
    {"use": "enc"},  # RFC 7517 §4.2: the key is for encryption, not for checking signatures
    {"key_ops": ["encrypt", "wrapKey"]},  # RFC 7517 §4.3: verify is not among its operations
    "private half",  # the set publishes the private key: anyone can sign as it
])
def test_a_jwk_that_cannot_vouch_for_a_signature_is_not_used(tmp_path, signer, edit) -> None:
    jwks = KeyRing(signer).jwks()
    entry = _entry(jwks, signer.kid)
    if edit == "private half":
        from cryptography.hazmat.primitives import serialization

        from models.jws import b64url_encode
        entry["d"] = b64url_encode(signer.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()))
    else:
        entry.update(edit)
    result = _verify(tmp_path, "report", _report(signer), jwks)
    assert result.exit_code == 4, result.output
    assert "no published key has kid" in result.stderr
    digest = build_digest(dt.datetime(2026, 5, 1, tzinfo=dt.UTC), [(uuid.UUID(int=1), bytes(32))], KeyRing(signer))
    assert _verify(tmp_path, "digest", json.dumps(digest).encode(), jwks).exit_code == 4
    assert _verify(tmp_path, "report", _report(signer), KeyRing(signer).jwks()).exit_code == 0  # as published: fine


# --- a document an upcoming key signed ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["report", "digest"])
@pytest.mark.parametrize("role", ["upcoming", "retired"])
def test_a_document_an_upcoming_or_retired_unsealed_key_signed_verifies_with_a_note_saying_so(
        tmp_path, signer, kind, role) -> None:
    """An upcoming key signs nothing until a rotation makes it active (README, key rotation);
    the seal treats one that signed as a process ahead of the sealer or a forgery. It is
    trusted, so its document verifies, but the auditor is told, as for a sealed key. So is a
    retired key's: trusted for any date until it is sealed (the case a leaked old key
    exploits), its documents verified with nothing said, the set giving no way to know."""
    from models.signing import RETIRED_MEMBER, UPCOMING_MEMBER

    jwks = (KeyRing(generate_ed25519(), upcoming=(signer.verifier(),)) if role == "upcoming"
            else KeyRing(generate_ed25519(), (signer.verifier(),))).jwks()
    assert _entry(jwks, signer.kid)[UPCOMING_MEMBER if role == "upcoming" else RETIRED_MEMBER] is True
    digest = build_digest(dt.datetime(2026, 5, 1, tzinfo=dt.UTC), [(uuid.UUID(int=1), bytes(32))], KeyRing(signer))
    document = _report(signer) if kind == "report" else json.dumps(digest).encode()
    shown = _verify(tmp_path, kind, document, jwks)
    assert shown.exit_code == 0, shown.output
    assert f"note: the key set names that key as {'upcoming' if role == 'upcoming' else 'retired and not sealed'}" in shown.output
    facts = json.loads(_verify(tmp_path, kind, document, jwks, "--json").stdout)
    assert facts["valid"] is True and facts[role] is True
    active = _verify(tmp_path, kind, document, KeyRing(signer).jwks(), "--json")
    assert role not in json.loads(active.stdout)  # the active key's documents carry no such note
    if role == "retired":  # a sealed key's documents carry their own note, not this one
        sealed = KeyRing(generate_ed25519(), (signer.verifier(),), (KeySeal(signer.kid, 1, "00" * 32, SEALED_AT),)).jwks()
        assert "retired" not in json.loads(_verify(tmp_path, kind, document, sealed, "--json").stdout)


# --- a key set the server answers with -------------------------------------------------------------


@pytest.mark.parametrize("answer", [{"keys": "x"}, [1, 2], {"items": []}, "keys"])
@pytest.mark.parametrize("kind", ["report", "digest"])
def test_a_server_key_set_that_is_no_key_set_stops_the_check_rather_than_failing_the_document(
        tmp_path, monkeypatch, signer, answer, kind) -> None:
    """The docs: a document that does not verify exits 4, anything that stops the check from
    running exits 1, and a --jwks file that is no JWK Set is the latter. The server's answer
    was not held to that: the report was called NOT valid (4) and the digest exit 1, or both
    NOT valid, for keys that were never there to check with."""
    monkeypatch.setenv("PLANT_URL", "http://plant.invalid")
    monkeypatch.setenv("PLANT_API_KEY", "k")
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
    monkeypatch.setattr(cli_jobs, "PlantClient", lambda config: PlantClient(config, transport=transport))
    digest = build_digest(dt.datetime(2026, 5, 1, tzinfo=dt.UTC), [(uuid.UUID(int=1), bytes(32))], KeyRing(signer))
    path = tmp_path / f"{kind}.json"
    path.write_bytes(_report(signer) if kind == "report" else json.dumps(digest).encode())
    result = CliRunner().invoke(cli, [kind, "verify", str(path)])
    assert result.exit_code == 1, result.output
    # An answer that is no JSON object at all is refused by the client first (cli/client.py::_json_of).
    assert result.stderr in ("plant: http://plant.invalid/api/v1/signing-keys is not a JWK Set (an object with a 'keys' list)\n",
                             "plant: http://plant.invalid/api/v1/signing-keys answered 200 with JSON that is not an object: "
                             "is PLANT_URL a Plant API?\n"), result.stderr
