"""Signed reports and ledger digests are read one way only: an altered file never verifies.

The signature covers a re-serialization (the canonical bytes of ``report``; the canonical
form of a digest's signed members), not the file itself. So a reader that accepts a
repeated member name (Python keeps the last, a person or another tool may read the
first), an extra member or another spelling of the same value would let a file say one
thing while its signature checks out over another. A report file must be exactly the
canonical document Plant exports; a digest file may be indented (the export is) but may
not repeat a member anywhere.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.errors import EXIT_NOT_VERIFIED
from cli.main import cli
from models.canonical import canonical_bytes
from models.errors import JwsError
from models.ledger_digest import digest_with_leaves
from models.reports import verify_report
from models.signing import KeyRing
from models.key_material import generate_ed25519
from tests.report_builders import signed_report


pytestmark = pytest.mark.usefixtures("no_server_log_lines")  # tests/conftest.py: CLI output without server log lines

REPORT = {
    "type": "plant.audit-report.v1",
    "run": {"id": "r1", "summary": {"non_compliant": 3, "compliant": 17}, "note": "café"},
    "findings": [{"code": "row-content-mismatch", "entity_id": "e1", "version": 1}],
}
FORGED = {**REPORT, "run": {"id": "r1", "summary": {"non_compliant": 0, "compliant": 20}, "note": "café"}, "findings": []}
AS_OF = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
HEADS = [(uuid.UUID(int=n << 64), hashlib.sha256(b"head %d" % n).digest()) for n in (1, 2, 3)]
FORGED_HASH = hashlib.sha256(b"forged").hexdigest()


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    return KeyRing(generate_ed25519())


@pytest.fixture(scope="module")
def document(ring: KeyRing) -> bytes:
    return signed_report(REPORT, ring)


@pytest.fixture
def jwks_file(ring: KeyRing, tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(ring.jwks()))
    return path


def replace_once(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    def edit(document: bytes) -> bytes:
        assert document.count(old) == 1, old
        return document.replace(old, new)
    return edit


def forged_report_first(document: bytes) -> bytes:
    """The attack from the review: a forged ``report`` member placed before the real one."""
    return b'{"report":' + canonical_bytes(FORGED) + b"," + document[1:]


def pretty_printed(document: bytes) -> bytes:
    return json.dumps(json.loads(document), indent=2, ensure_ascii=False).encode()


def signature_first(document: bytes) -> bytes:
    parsed = json.loads(document)
    return json.dumps({"signature": parsed["signature"], "report": parsed["report"]},
                      separators=(",", ":"), ensure_ascii=False).encode()


ALTERATIONS: dict[str, Callable[[bytes], bytes]] = {
    "forged-report-member-before-the-real-one": forged_report_first,
    "duplicate-member-inside-the-report": replace_once(b'"non_compliant":3', b'"non_compliant":0,"non_compliant":3'),
    "duplicate-signature-member": replace_once(b'"signature":', b'"signature":"x..y","signature":'),
    "extra-top-level-member": replace_once(b'{"report":', b'{"note":"all clean","report":'),
    "extra-top-level-member-last": lambda d: d[:-1] + b',"verified":true}',
    "number-respelled-as-float": replace_once(b'"non_compliant":3', b'"non_compliant":3.0'),
    "number-respelled-with-exponent": replace_once(b'"version":1', b'"version":1e0'),
    "whitespace-pretty-printed": pretty_printed,
    "whitespace-trailing-newline": lambda d: d + b"\n",
    "whitespace-after-colon": replace_once(b'"findings":', b'"findings": '),
    "members-reordered": signature_first,
    "string-respelled-with-escapes": replace_once(b'"id":"r1"', b'"id":"\\u0072\\u0031"'),
    "text-not-nfc": replace_once("café".encode(), "cafe\u0301".encode()),
}


@pytest.mark.parametrize("alteration", list(ALTERATIONS))
def test_an_altered_report_document_is_refused(document: bytes, ring: KeyRing, alteration: str) -> None:
    assert verify_report(document, ring.jwks()).kid == ring.active.kid  # the document as exported verifies
    altered = ALTERATIONS[alteration](document)
    assert altered != document
    with pytest.raises(JwsError, match="duplicate member name|canonical|exactly the members"):
        verify_report(altered, ring.jwks())


@pytest.mark.parametrize("garbage", [
    b"[]",
    b'{"signature":"a..b"}',
    b"\xff\xfe not UTF-8",
    b'{"report":NaN,"signature":"a..b"}',
    b'{"report":' + b"[" * 100_000 + b"]" * 100_000 + b',"signature":"a..b"}',
], ids=["array", "no-report-member", "not-utf8", "nan", "nested-too-deeply"])
def test_a_malformed_report_document_is_a_verification_error_not_a_crash(ring: KeyRing, garbage: bytes) -> None:
    with pytest.raises(JwsError):
        verify_report(garbage, ring.jwks())


def test_the_cli_refuses_a_report_with_a_forged_member_before_the_real_one(
    document: bytes, jwks_file: Path, tmp_path: Path
) -> None:
    report_file = tmp_path / "report.json"
    report_file.write_bytes(document)
    ok = CliRunner().invoke(cli, ["report", "verify", str(report_file), "--jwks", str(jwks_file), "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["findings"] == 1
    report_file.write_bytes(forged_report_first(document))
    refused = CliRunner().invoke(cli, ["report", "verify", str(report_file), "--jwks", str(jwks_file)])
    assert refused.exit_code == EXIT_NOT_VERIFIED and refused.stdout == ""
    assert refused.stderr == "plant: report signature is NOT valid: not a signed report document: " \
                             "duplicate member name 'report'\n"


def digest_text(ring: KeyRing) -> str:
    """A digest with leaves exactly as ``plant digest export --leaves -o FILE`` writes it: indented."""
    digest = digest_with_leaves(AS_OF, HEADS, ring, versions={entity_id: 2 for entity_id, _ in HEADS})
    return json.dumps(digest, indent=2) + "\n"


def with_forged_member_first(name: str, forged: Any) -> Callable[[dict[str, Any], str], str]:
    """Put ``"name": forged`` just before the real top-level member ``name``."""
    def edit(digest: dict[str, Any], text: str) -> str:
        real = f'\n  "{name}": {json.dumps(digest[name])}'
        assert text.count(real) == 1
        return text.replace(real, f'\n  "{name}": {json.dumps(forged)},{real}')
    return edit


def with_forged_leaf_head(digest: dict[str, Any], text: str) -> str:
    real = f'"head": "{digest["leaves"][1]["head"]}"'
    assert text.count(real) == 1
    return text.replace(real, f'"head": "{FORGED_HASH}",\n      {real}')


DIGEST_DUPLICATES: dict[str, Callable[[dict[str, Any], str], str]] = {
    "forged-heads-root-before-the-real-one": with_forged_member_first("heads_root", FORGED_HASH),
    "forged-entity-count-before-the-real-one": with_forged_member_first("entity_count", 2),
    "forged-as-of-before-the-real-one": with_forged_member_first("as_of", "2030-01-01T00:00:00.000000Z"),
    "forged-leaf-head-before-the-real-one": with_forged_leaf_head,
}


@pytest.mark.parametrize("duplicate", list(DIGEST_DUPLICATES))
def test_the_cli_refuses_a_digest_that_repeats_a_member(
    ring: KeyRing, jwks_file: Path, tmp_path: Path, duplicate: str
) -> None:
    digest_file = tmp_path / "digest.json"
    text = digest_text(ring)
    digest_file.write_text(text)
    ok = CliRunner().invoke(cli, ["digest", "verify", str(digest_file), "--jwks", str(jwks_file)])
    assert ok.exit_code == 0, ok.output  # indentation is allowed: the export itself is indented
    digest_file.write_text(DIGEST_DUPLICATES[duplicate](json.loads(text), text))
    refused = CliRunner().invoke(cli, ["digest", "verify", str(digest_file), "--jwks", str(jwks_file), "--json"])
    assert refused.exit_code == EXIT_NOT_VERIFIED
    assert json.loads(refused.stdout)["valid"] is False
    assert refused.stderr.startswith("plant: ledger digest is NOT valid: not strict JSON (duplicate member name")
    assert refused.stderr.count("\n") == 1


def test_the_shared_strict_parse_refuses_repeated_names_at_any_depth() -> None:
    from models.canonical import parse_canonical_json, strict_json_loads  # the helper the checks share

    assert strict_json_loads('{"a": [{"b": 1}, {"b": 2}], "c": {"b": 3}}') == {"a": [{"b": 1}, {"b": 2}], "c": {"b": 3}}
    for text in ('{"a":1,"a":1}', '{"a":[{"b":1,"b":2}]}', '{"a":{"b":{"c":1,"c":1}}}'):
        with pytest.raises(ValueError, match="duplicate member name"):
            strict_json_loads(text)
    with pytest.raises(ValueError, match="not JSON"):
        strict_json_loads('{"a": Infinity}')
    with pytest.raises(ValueError, match="nested too deeply"):
        strict_json_loads("[" * 100_000 + "]" * 100_000)
    assert parse_canonical_json(b'{"a":[1,"\xc3\xa9"],"b":1.5}') == {"a": [1, "é"], "b": 1.5}
    for text in (b'{"b":1,"a":2}', b'{"a": 1}', b'{"a":1.0}', b'{"a":"\\u00e9"}', b'\xef\xbb\xbf{"a":1}'):
        with pytest.raises(ValueError, match="not canonical JSON"):
            parse_canonical_json(text)


@pytest.mark.parametrize("report", [REPORT, {**REPORT, "run": {"id": "\u00e9\u0301 \U0001f600 \"\\\n", "n": 1.5}}])
def test_the_document_made_from_its_report_s_canonical_bytes_is_the_canonical_document(ring: KeyRing, report) -> None:
    """An export canonicalizes its report once (seconds for a run of many findings) and puts
    the document around those bytes: they must be what canonicalizing the whole would give."""
    document = signed_report(report, ring)
    parsed = json.loads(document)
    assert document == canonical_bytes({"report": report, "signature": parsed["signature"]})
    assert verify_report(document, ring).kid == ring.active.kid
