"""An entity's history checked offline: ``plant history export`` and ``plant history verify``.

The README tells an auditor that the published keys verify the chain outside Plant; these
commands are how. The files are built here with Plant's own chain code and signed with the
suite's key ring, so a forgery is one made by someone who holds the key (re-signed after an
edit), and the checks that do not need a key (numbering, links, content hashes) are shown apart.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from click.testing import CliRunner, Result

from cli.errors import EXIT_NOT_VERIFIED
from cli.history import COLLECTIONS
from cli.main import cli
from models.chain import GENESIS_LINK, link_hash
from models.ledger_digest import digest_with_leaves
from models.signing import KeyRing
from models.key_material import generate_ed25519
from tests.test_cli_api import api_url, as_json, plant  # noqa: F401 (fixtures: a live server)

pytestmark = pytest.mark.usefixtures("no_server_log_lines")

ENTITY = uuid.UUID("7d1c2e4a-0000-4000-8000-0000000000a1")


def _version(ring: KeyRing, number: int, prev: bytes, content: bytes, entity_id: uuid.UUID = ENTITY) -> dict[str, Any]:
    content_hash = hashlib.sha256(content).digest()
    link = link_hash("industry", entity_id, number, prev, content_hash)
    kid, signature = ring.sign(link)
    return {"version": number, "content": content.decode(), "content_hash": content_hash.hex(), "prev_link": prev.hex(),
            "link_hash": link.hex(), "kid": kid, "signature": base64.urlsafe_b64encode(signature).decode().rstrip("="),
            "actor": "api-key:test", "created_at": "2026-12-07T06:00:00Z"}


def _history(ring: KeyRing, contents: list[bytes], entity_id: uuid.UUID = ENTITY) -> dict[str, Any]:
    items, prev = [], GENESIS_LINK
    for number, content in enumerate(contents, start=1):
        items.append(_version(ring, number, prev, content, entity_id))
        prev = bytes.fromhex(items[-1]["link_hash"])
    return {"entity_type": "industry", "entity_id": str(entity_id), "items": items}


def _content(description: str) -> bytes:
    return rfc8785.dumps({"code": "HIS", "description": description, "name": "History"})


def _write(tmp_path: Path, name: str, value: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(value, indent=2))
    return path


def _verify(history: Path, jwks: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["history", "verify", str(history), "--jwks", str(jwks), *args])


@pytest.fixture
def files(tmp_path: Path, keyring: KeyRing) -> tuple[Path, dict[str, Any]]:
    """The JWKS file and a valid three-version history."""
    return _write(tmp_path, "jwks.json", keyring.jwks()), _history(keyring, [_content(f"v{n}") for n in (1, 2, 3)])


def test_a_signed_linked_history_verifies_offline(tmp_path, files) -> None:
    jwks, history = files
    result = _verify(_write(tmp_path, "history.json", history), jwks, "--json")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["valid"] is True and facts["versions"] == 3 and facts["head"] == history["items"][-1]["link_hash"]
    assert facts["keys"].startswith("offline")
    text = _verify(_write(tmp_path, "history.json", history), jwks)
    assert text.exit_code == 0 and text.stdout.startswith(f"history valid: industry {ENTITY}, 3 version(s)")


def _edited_content(history: dict[str, Any]) -> None:
    history["items"][1]["content"] = _content("edited").decode()


def _rehashed_unsigned(history: dict[str, Any]) -> None:
    """The content edited and its hash and link recomputed, by someone without the key."""
    item = history["items"][1]
    item["content"] = _content("edited").decode()
    item["content_hash"] = hashlib.sha256(item["content"].encode()).hexdigest()
    item["link_hash"] = link_hash("industry", ENTITY, 2, bytes.fromhex(item["prev_link"]),
                                  bytes.fromhex(item["content_hash"])).hex()


def _version_dropped(history: dict[str, Any]) -> None:
    del history["items"][1]


def _reordered(history: dict[str, Any]) -> None:
    history["items"][1], history["items"][2] = history["items"][2], history["items"][1]


def _foreign_key(history: dict[str, Any]) -> None:
    """A version signed by a key the published set does not hold."""
    stranger = KeyRing(generate_ed25519())
    history["items"][2] = _version(stranger, 3, bytes.fromhex(history["items"][1]["link_hash"]), _content("v3"))


def _another_entity(history: dict[str, Any]) -> None:
    """The chain of one entity presented as another's: the id is in every link."""
    history["entity_id"] = str(uuid.UUID(int=ENTITY.int + 1))


@pytest.mark.parametrize(("tamper", "code"), [
    (_edited_content, "content-hash-mismatch"),
    (_rehashed_unsigned, "version 2: rehashed-version"),
    (_version_dropped, "version-gap"),
    (_reordered, "version-gap"),
    (_foreign_key, "unknown-signing-key"),
    (_another_entity, "link-hash-mismatch"),
], ids=["edited", "rehashed", "dropped", "reordered", "foreign-key", "another-entity"])
def test_a_changed_history_does_not_verify(tmp_path, files, tamper, code) -> None:
    jwks, history = files
    tamper(history)
    for flags in ([], ["--json"]):
        result = _verify(_write(tmp_path, "history.json", history), jwks, *flags)
        assert result.exit_code == EXIT_NOT_VERIFIED, result.output
        assert "does NOT verify" in result.stderr and code in result.stderr
        if flags:
            assert json.loads(result.stdout)["valid"] is False


def test_content_that_is_not_canonical_json_does_not_verify_though_signed(tmp_path, files, keyring) -> None:
    """Signed, linked and hashed, but a member repeated: two readers would read two values."""
    jwks, _ = files
    history = _history(keyring, [_content("v1"), b'{"code":"HIS","description":"a","description":"b","name":"History"}'])
    result = _verify(_write(tmp_path, "history.json", history), jwks)
    assert result.exit_code == EXIT_NOT_VERIFIED and "version 2: content-not-canonical" in result.stderr


@pytest.mark.parametrize("document", [
    [], {"entity_type": "industry", "entity_id": str(ENTITY)}, {"entity_type": "planet", "entity_id": str(ENTITY), "items": []},
    {"entity_type": "industry", "entity_id": str(ENTITY).upper(), "items": [{}]},
], ids=["list", "no-items", "bad-type", "bad-id"])
def test_a_file_that_is_no_history_export_is_refused_saying_so(tmp_path, files, document) -> None:
    jwks, _ = files
    result = _verify(_write(tmp_path, "history.json", document), jwks)
    assert result.exit_code == EXIT_NOT_VERIFIED and "is NOT a history export" in result.stderr


def _digest_file(tmp_path: Path, ring: KeyRing, heads: dict[uuid.UUID, tuple[str, int]]) -> Path:
    ordered = sorted((entity_id, bytes.fromhex(head)) for entity_id, (head, _) in heads.items())
    digest = digest_with_leaves(dt.datetime(2026, 12, 7, tzinfo=dt.UTC), ordered, ring,
                                {entity_id: version for entity_id, (_, version) in heads.items()})
    return _write(tmp_path, "digest.json", digest)


def test_a_chain_rewritten_after_a_digest_does_not_verify_against_it(tmp_path, files, keyring) -> None:
    """Re-signed with the key, the rewritten chain verifies on its own; the digest an auditor kept
    from before shows it is not the chain it attested."""
    jwks, history = files
    digest = _digest_file(tmp_path, keyring, {ENTITY: (history["items"][1]["link_hash"], 2)})
    grown = _verify(_write(tmp_path, "history.json", history), jwks, "--digest", str(digest), "--json")
    assert grown.exit_code == 0, grown.output
    assert json.loads(grown.stdout)["digest"]["head"] == history["items"][1]["link_hash"]
    rewritten = _history(keyring, [_content("v1"), _content("rewritten"), _content("v3")])
    alone = _verify(_write(tmp_path, "rewritten.json", rewritten), jwks)
    assert alone.exit_code == 0, alone.output
    against = _verify(tmp_path / "rewritten.json", jwks, "--digest", str(digest))
    assert against.exit_code == EXIT_NOT_VERIFIED and "rewritten after the digest" in against.stderr
    elsewhere = _digest_file(tmp_path, keyring, {uuid.UUID(int=7): ("ab" * 32, 1)})
    unheld = _verify(tmp_path / "rewritten.json", jwks, "--digest", str(elsewhere))
    assert unheld.exit_code == 0 and "holds no head for it" in unheld.stdout


def test_a_digest_without_leaves_or_not_valid_is_refused(tmp_path, files, keyring) -> None:
    jwks, history = files
    digest_file = _digest_file(tmp_path, keyring, {ENTITY: (history["items"][2]["link_hash"], 3)})
    digest = json.loads(digest_file.read_text())
    history_file = _write(tmp_path, "history.json", history)
    rootless = _write(tmp_path, "rootless.json", {k: v for k, v in digest.items() if k != "leaves"})
    assert "has no leaves" in _verify(history_file, jwks, "--digest", str(rootless)).stderr
    digest["entity_count"] += 1
    forged = _verify(history_file, jwks, "--digest", str(_write(tmp_path, "forged.json", digest)))
    assert forged.exit_code == EXIT_NOT_VERIFIED and "ledger digest is NOT valid" in forged.stderr


def test_the_cli_knows_the_api_s_collection_of_every_entity_type() -> None:
    from web.api.registry import ROUTES

    assert COLLECTIONS == {route.name: route.path for route in ROUTES}


@pytest.mark.e2e
def test_a_seeded_agent_s_exported_history_verifies_against_the_servers_keys_and_digest(
        plant, seeded, tmp_path) -> None:  # noqa: F811 (the imported fixture)
    jwks, history, digest = tmp_path / "jwks.json", tmp_path / "history.json", tmp_path / "digest.json"
    jwks.write_text(plant("signing-keys", "list", "--json").stdout)
    assert plant("digest", "export", "--leaves", "-o", digest).exit_code == 0
    steward = str(seeded.steward_id)
    exported = plant("history", "export", "agent", steward, "-o", history)
    assert exported.exit_code == 0 and "version(s) of agent" in exported.stdout, exported.output
    leaf = next(leaf for leaf in json.loads(digest.read_text())["leaves"] if leaf["entity_id"] == steward)
    checked = as_json(plant("history", "verify", history, "--jwks", jwks, "--digest", digest, "--json"))
    assert checked["valid"] is True and checked["digest"]["head"] == leaf["head"]
    assert checked["entity_type"] == "agent" and checked["versions"] == leaf["version"]
    online = plant("history", "verify", history)
    assert online.exit_code == 0 and "keys fetched from http://127.0.0.1:" in online.stdout
    wrong_type = plant("history", "export", "skill", steward)
    assert wrong_type.exit_code == 1 and "404" in wrong_type.stderr
