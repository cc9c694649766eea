"""Sealed retired keys: after its seal a retired key signs nothing valid (writes, audits, restores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from cli.main import cli
from models.chain import append_version
from models.chain_verification import head_drift, verify_entity
from models.seal_check import SEALED_CODE
from models.embeddings import HashingEmbedder
from models.entities import EntityType, Skill, governed_content
from models.errors import EntityTampered, SigningKeyError
from models.key_seals import SEAL_INVALID_CODE, seal_list_root, seal_problems, with_seal_lists
from models.db import one_off_sessions, transaction
from models.canonical import sha256
from models.jws import b64url_decode, b64url_encode, signature_sha256
from models.keys import keyring_from_settings
from models.ledger_store import store_digest
from models.registry import WriteContext, create_entity, update_entity
from models.repair import NotRestorable, restore_entity
from models.seed import bootstrap_steward
from models.settings import Settings, load_settings
from models.signed_exports import signed_once
from models.signing import KeyRing, KeySeal, SigningKey
from models.key_material import generate_ed25519
from tests.test_audit import lift_guard, run_audit
from web.report_html import report_page
from tests.conftest import EMBEDDER

E = EntityType


class Rotated:
    """A registry written with an old key, then the key rotated and sealed with a digest."""

    def __init__(self, session, *, digest_before_the_seal: bool = False) -> None:
        self.session, self.old, self.new = session, generate_ed25519(), generate_ed25519()
        self.leaked = KeyRing(self.old)  # what someone holding the old private key can sign with
        steward = bootstrap_steward(session, self.ctx(self.leaked))
        self.gov = {"governance_agent_id": steward}
        self.skill = self.make(E.SKILL, name="Sealed Skill", skill_key="sealed-skill", category="technical",
                               description="Written before the seal")
        self.edit(self.skill, self.leaked, description="Edited before the seal")
        if digest_before_the_seal:  # the hourly digest, signed with the old key while it was active
            self.early_digest = store_digest(session, keyring=self.leaked)
        self.rotated = KeyRing(self.new, (self.old.verifier(),))
        digest = store_digest(session, keyring=self.rotated)
        self.seal = KeySeal(self.old.kid, digest.id, bytes(digest.heads_root).hex(), digest.document["as_of"])
        self.sealed = KeyRing(self.new, (self.old.verifier(),), (self.seal,))

    def ctx(self, ring: KeyRing) -> WriteContext:
        return WriteContext("test", ring, HashingEmbedder())

    def make(self, entity_type, ring=None, **data):
        return create_entity(self.session, entity_type=entity_type, data={**self.gov, **data}, ctx=self.ctx(ring or self.leaked))

    def edit(self, entity, ring, **changes):
        return update_entity(self.session, entity_type=entity.entity_type_value, entity_id=entity.id, changes=changes,
                             ctx=self.ctx(ring))

    def forge(self, entity, ring, **changes):
        """A version signed on top of the entity by whoever holds ``ring``'s key, with their own
        code: Plant's registry signs nothing on top of a deleted entity (``entity-deleted``)."""
        for field, value in changes.items():
            setattr(entity, field, value)
        append_version(self.session, entity=entity, actor="test", keyring=ring)
        self.session.flush()
        return entity

    def codes_since_digest(self, ring: KeyRing) -> dict[str, list]:
        return self.codes(ring, {"since": "latest-digest"})

    def codes(self, ring: KeyRing, params: dict | None = None) -> dict[str, list]:
        _, findings = run_audit(self.session, ring, params)
        found: dict[str, list] = {}
        for finding in findings:
            found.setdefault(finding.code, []).append((finding.entity_id, finding.version))
        return found


@pytest.fixture
def rotated(db_session) -> Rotated:
    return Rotated(db_session)


def test_what_a_sealed_key_signed_before_its_seal_stays_valid(rotated) -> None:
    codes = rotated.codes(rotated.sealed)
    assert SEALED_CODE not in codes and SEAL_INVALID_CODE not in codes, codes
    assert verify_entity(rotated.session, entity=rotated.skill, keyring=rotated.sealed).ok
    rotated.edit(rotated.skill, rotated.sealed, description="Edited with the new key")  # writes go on
    assert head_drift(rotated.session, [(rotated.skill, governed_content(rotated.skill))], rotated.sealed) == {}


def test_a_version_a_leaked_retired_key_signs_after_its_seal_is_caught(rotated) -> None:
    rotated.edit(rotated.skill, rotated.leaked, description="Forged with the leaked key")  # version 3, after the seal
    forged_entity = rotated.make(E.INDUSTRY, name="Forged Industry", code="FRG")  # in no digest at all
    assert SEALED_CODE not in rotated.codes(rotated.rotated)  # unsealed, the forgery verifies: the gap seals close

    codes = rotated.codes(rotated.sealed)
    assert sorted(codes[SEALED_CODE], key=str) == sorted([(rotated.skill.id, 3), (forged_entity.id, 1)], key=str)
    with pytest.raises(EntityTampered) as refused:  # never signed over
        rotated.edit(rotated.skill, rotated.sealed, description="On top of the forgery")
    assert refused.value.extensions["finding"] == SEALED_CODE
    incremental = rotated.codes_since_digest(rotated.sealed)
    assert sorted(incremental[SEALED_CODE], key=str) == sorted([(rotated.skill.id, 3), (forged_entity.id, 1)], key=str)
    with pytest.raises(NotRestorable):
        restore_entity(rotated.session, entity_type=E.SKILL, entity_id=rotated.skill.id, keyring=rotated.sealed,
                       embedder=HashingEmbedder(), actor="operator:test")
    assert rotated.session.get(Skill, rotated.skill.id).version == 3  # nothing was changed


def test_a_digest_a_leaked_retired_key_signs_after_its_seal_is_not_trusted(rotated) -> None:
    """Stored as the latest digest, it would cover a forged version from the incremental audit."""
    from models.ledger_compare import latest_digest
    from models.ledger_trust import stored_digest_problem
    from tests.test_audit import digest_of

    rotated.edit(rotated.skill, rotated.leaked, description="Forged with the leaked key")  # version 3, after the seal
    forged = store_digest(rotated.session, keyring=rotated.leaked)
    assert latest_digest(rotated.session).id == forged.id
    assert stored_digest_problem(rotated.session, forged, rotated.rotated) is None  # unsealed: trusted, the gap
    assert "sealed" in stored_digest_problem(rotated.session, forged, rotated.sealed)
    codes = rotated.codes_since_digest(rotated.sealed)
    assert "digest-invalid" in codes, codes
    outside = digest_of(rotated.session, rotated.leaked)  # handed in by someone holding the leaked key
    assert "digest-invalid" in rotated.codes(rotated.sealed, {"against_digest": outside})


def test_a_digest_a_sealed_key_signed_before_its_seal_stays_trusted(db_session) -> None:
    from models.ledger_trust import stored_digest_problem

    rotated = Rotated(db_session, digest_before_the_seal=True)
    assert stored_digest_problem(db_session, rotated.early_digest, rotated.sealed) is None


def test_an_entity_in_no_seal_digest_is_held_to_nothing_whatever_its_row_says(rotated) -> None:
    # Created after the seal with the leaked key, then marked deleted through SQL: a row
    # says nothing signed, so it cannot excuse the versions.
    forged = rotated.make(E.INDUSTRY, name="Forged Then Hidden", code="FTH")
    rotated.session.execute(text("UPDATE industries SET deleted_at = now() WHERE id = :i"), {"i": forged.id})
    rotated.session.expire_all()
    assert (forged.id, 1) in rotated.codes(rotated.sealed)[SEALED_CODE]
    with pytest.raises(NotRestorable):
        restore_entity(rotated.session, entity_type=E.INDUSTRY, entity_id=forged.id, keyring=rotated.sealed,
                       embedder=HashingEmbedder(), actor="operator:test")


def test_an_entity_soft_deleted_before_the_seal_is_held_by_the_seal_file(db_session) -> None:
    import datetime as dt

    from models.key_seals import deleted_heads

    world = Rotated.__new__(Rotated)
    world.session, world.old, world.new = db_session, generate_ed25519(), generate_ed25519()
    world.leaked = KeyRing(world.old)
    world.gov = {"governance_agent_id": bootstrap_steward(db_session, world.ctx(world.leaked))}
    gone = world.make(E.INDUSTRY, name="Gone Industry", code="GON")
    world.edit(gone, world.leaked, deleted_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))  # honestly, before the seal
    rotated = KeyRing(world.new, (world.old.verifier(),))
    digest = store_digest(db_session, keyring=rotated)
    seal = KeySeal(world.old.kid, digest.id, bytes(digest.heads_root).hex(), digest.document["as_of"], deleted_heads(db_session))
    assert seal.deleted == ((str(gone.id), bytes(gone.head_link_hash).hex()),)
    sealed = KeyRing(world.new, (world.old.verifier(),), (seal,))
    assert SEALED_CODE not in world.codes(sealed)
    world.forge(gone, world.leaked, name="Gone, forged back")  # version 3, with the leaked key
    assert world.codes(sealed)[SEALED_CODE] == [(gone.id, 3)]


def tombstoned_world(db_session: Any) -> tuple[Rotated, list[Any], Any, KeyRing]:
    """A registry with three industries soft-deleted honestly before a seal that names its
    digest's tombstone root (as ``plant signing-keys seal`` writes it): (the world, the three,
    the seal's digest, the ring holding the seal)."""
    import datetime as dt

    world = Rotated.__new__(Rotated)
    world.session, world.old, world.new = db_session, generate_ed25519(), generate_ed25519()
    world.leaked = KeyRing(world.old)
    world.gov = {"governance_agent_id": bootstrap_steward(db_session, world.ctx(world.leaked))}
    gone = [world.make(E.INDUSTRY, name=f"Gone Industry {n}", code=f"GN{n}") for n in range(3)]
    for industry in gone:
        world.edit(industry, world.leaked, deleted_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))  # honestly, before the seal
    rotated = KeyRing(world.new, (world.old.verifier(),))
    digest = store_digest(db_session, keyring=rotated)
    seal = KeySeal(world.old.kid, digest.id, bytes(digest.heads_root).hex(), digest.document["as_of"],
                   tombstones_root=digest.document["tombstones_root"])
    return world, gone, digest, KeyRing(world.new, (world.old.verifier(),), (seal,))


def test_an_entity_soft_deleted_before_the_seal_is_held_by_the_seal_digest_s_tombstones(db_session) -> None:
    """A seal listed every soft-deleted entity's head in its file, some 125 bytes each: past
    about 500 a seal no longer fit a Secret Manager version (64 KiB), where a Cloud Run
    deployment ships it. It names the root of its digest's tombstones instead, whose rows
    are checked against it like the leaves: a tombstone rewritten through SQL holds nothing."""
    world, gone, digest, sealed = tombstoned_world(db_session)
    assert SEALED_CODE not in world.codes(sealed)
    world.forge(gone[0], world.leaked, name="Gone, forged back")  # version 3, with the leaked key
    assert world.codes(sealed)[SEALED_CODE] == [(gone[0].id, 3)]
    assert seal_problems(db_session, sealed) == []
    import models.seal_check as seal_check

    seal_check._sealed_leaves.clear()  # as a process that starts after the edit below
    lift_guard(db_session, "UPDATE ledger_digest_tombstones SET link_hash = :link WHERE digest_id = :d AND entity_id = :e",
               table="ledger_digest_tombstones", link=bytes(gone[1].head_link_hash), d=digest.id, e=gone[0].id)
    flagged = {entity for entity, _ in world.codes(sealed)[SEALED_CODE]}
    assert {industry.id for industry in gone} <= flagged  # the seal holds nothing it cannot check: fails closed


def test_a_leaf_is_held_by_its_link_not_by_the_version_stored_beside_it(rotated) -> None:
    session, seal = rotated.session, rotated.seal
    rotated.edit(rotated.skill, rotated.leaked, description="Forged with the leaked key")  # version 3
    lift_guard(session, "UPDATE ledger_digest_heads SET version = 3 WHERE digest_id = :d AND entity_id = :e",
               table="ledger_digest_heads", d=seal.digest_id, e=rotated.skill.id)  # as the table's owner could
    session.expire_all()
    assert (rotated.skill.id, 3) in rotated.codes(rotated.sealed)[SEALED_CODE]
    with pytest.raises(EntityTampered):
        rotated.edit(rotated.skill, rotated.sealed, description="On top of the forgery")


def _point_leaf_at_head(session, seal: KeySeal, entity_id) -> None:
    """What the owner of ledger_digest_heads could do, past its guard (migration 0017), to
    excuse a forged head."""
    with session.begin_nested():  # a transaction id other than the one that wrote the leaves
        lift_guard(session, "UPDATE ledger_digest_heads SET version = e.version, link_hash = e.head_link_hash FROM skills e "
                   "WHERE e.id = ledger_digest_heads.entity_id AND digest_id = :d AND entity_id = :e",
                   table="ledger_digest_heads", d=seal.digest_id, e=entity_id)
    session.expire_all()


def test_a_seal_leaf_edited_to_name_a_forged_version_does_not_let_a_write_sign_on_top_of_it(rotated) -> None:
    """A write read the seal digest's leaf rows as they were: one edited to name the version a
    leaked retired key forged after the seal excused it, and the write was signed on top of the
    forgery (helper-68). The leaves are taken only as they hash to the root the seal file names."""
    from models.seal_check import _sealed_leaves

    _sealed_leaves.clear()  # as a process that has not checked this seal's leaves yet
    rotated.edit(rotated.skill, rotated.leaked, description="Forged with the leaked key")  # version 3
    _point_leaf_at_head(rotated.session, rotated.seal, rotated.skill.id)
    with pytest.raises(EntityTampered) as refused:
        rotated.edit(rotated.skill, rotated.sealed, description="On top of the forgery")
    assert "no longer hash to the root the seal names" in refused.value.detail
    codes = rotated.codes(rotated.sealed)  # leaves that fail hold nothing: all the sealed key signed is suspect
    assert rotated.skill.id in {entity for entity, _ in codes[SEALED_CODE]} and codes[SEAL_INVALID_CODE]
    with pytest.raises(NotRestorable):
        restore_entity(rotated.session, entity_type=E.SKILL, entity_id=rotated.skill.id, keyring=rotated.sealed,
                       embedder=HashingEmbedder(), actor="operator:test")


def test_a_process_that_checked_the_seal_leaves_keeps_them_when_a_row_is_edited_later(rotated) -> None:
    assert SEALED_CODE not in rotated.codes(rotated.sealed)  # checks and keeps the leaves
    rotated.edit(rotated.skill, rotated.leaked, description="Forged with the leaked key")  # version 3
    _point_leaf_at_head(rotated.session, rotated.seal, rotated.skill.id)
    with pytest.raises(EntityTampered):
        rotated.edit(rotated.skill, rotated.sealed, description="On top of the forgery")
    assert (rotated.skill.id, 3) in rotated.codes(rotated.sealed)[SEALED_CODE]


def test_seal_leaves_rewritten_unchanged_still_hold_what_the_key_signed_before_its_seal(rotated) -> None:
    """A no-op UPDATE by any SQL writer, pg_repack or a dump and restore rewrites every leaf
    row unchanged (new transaction ids): that must freeze nothing (the reverted 3ad29bf did)."""
    from models.seal_check import _sealed_leaves

    with rotated.session.begin_nested():  # a transaction id other than the one that wrote the leaves
        lift_guard(rotated.session, "UPDATE ledger_digest_heads SET version = version WHERE digest_id = :d",
                   table="ledger_digest_heads", d=rotated.seal.digest_id)  # as the owner's pg_repack could
    _sealed_leaves.clear()  # as a process that has not checked this seal's leaves yet
    rotated.edit(rotated.skill, rotated.sealed, description="After the rewrite, with the new key")
    codes = rotated.codes(rotated.sealed)
    assert SEALED_CODE not in codes and SEAL_INVALID_CODE not in codes, codes


def test_a_registry_whose_rows_point_off_their_chains_is_not_sealed(rotated) -> None:
    from models.key_seals import rows_off_their_chain_heads

    assert rows_off_their_chain_heads(rotated.session) == []
    rotated.session.execute(text("UPDATE skills SET version = 50, head_link_hash = :h WHERE id = :s"),
                            {"h": bytes(32), "s": rotated.skill.id})
    assert rows_off_their_chain_heads(rotated.session) == [f"skill {rotated.skill.id}"]


def test_a_seal_whose_digest_is_gone_or_edited_makes_every_run_say_so(rotated, app) -> None:
    session, seal = rotated.session, rotated.seal
    assert seal_problems(session, rotated.sealed) == []
    with session.begin_nested():  # a subtransaction: the edited row gets another xmin, as any later edit does
        lift_guard(session, "UPDATE ledger_digest_heads SET version = version + 5 WHERE digest_id = :d AND entity_id = :e",
                   table="ledger_digest_heads", d=seal.digest_id, e=rotated.skill.id)  # to cover a forged version
    [problem] = seal_problems(session, rotated.sealed)
    assert f"digest {seal.digest_id}" in problem and "cannot be trusted" in problem
    codes = rotated.codes(rotated.sealed)
    assert codes[SEAL_INVALID_CODE] == [(None, None)]
    summary = run_audit(session, rotated.sealed)[0]
    assert SEAL_INVALID_CODE in summary["run_level_findings"]
    with app.test_request_context():  # the auditor's page lists it, with why
        page = report_page(session, run_id=uuid.UUID(summary["run_id"]), keyring=rotated.sealed).get_data(as_text=True)
    assert f'data-run-level-code="{SEAL_INVALID_CODE}"' in page and "cannot be trusted" in page
    session.execute(text("UPDATE skills SET name = 'Renamed by hand' WHERE id = :s"), {"s": rotated.skill.id})
    session.expire_all()
    with pytest.raises(NotRestorable, match="key seal cannot be trusted"):  # nothing it vouches for is restored
        restore_entity(session, entity_type=E.SKILL, entity_id=rotated.skill.id, keyring=rotated.sealed,
                       embedder=HashingEmbedder(), actor="operator:test")
    session.execute(text("UPDATE skills SET name = 'Sealed Skill' WHERE id = :s"), {"s": rotated.skill.id})
    session.expire_all()
    rotated.edit(rotated.skill, rotated.rotated, description="Changed since the seal")
    other = store_digest(session, keyring=rotated.rotated)  # a later digest: another root
    wrong = KeyRing(rotated.new, (rotated.old.verifier(),), (KeySeal(seal.kid, other.id, seal.heads_root, seal.as_of),))
    assert "root differs" in seal_problems(session, wrong)[0]
    lift_guard(session, "DELETE FROM ledger_digests WHERE id = :d", table="ledger_digests", d=seal.digest_id)
    assert "is gone" in seal_problems(session, rotated.sealed)[0]


def test_plant_signing_keys_seal_writes_seal_files_the_keyring_loads(key_settings, settings, clean_db, monkeypatch) -> None:
    monkeypatch.setenv("DATABASE_URL", settings.database_url)

    def invoke(*args: str):
        result = CliRunner().invoke(cli, ["signing-keys", *args, "--json"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    assert invoke("seal") == {"sealed": [], "restart_required": False}  # nothing retired yet
    with one_off_sessions(settings) as sessions, transaction(sessions) as session:  # an export by the key to retire
        jws = signed_once(session, document=b'{"a":"report"}', keyring=keyring_from_settings(key_settings))
    old_kid = invoke("rotate")["old_kid"]
    [sealed] = invoke("seal")["sealed"]
    assert sealed["kid"] == old_kid and sealed["signatures_listed"] == 1
    seal_file = Path(key_settings.retired_signing_keys_path) / f"{old_kid}.seal.json"
    from models.audit_tables import LedgerDigest

    written = json.loads(seal_file.read_bytes())
    assert written["digest_id"] == sealed["digest_id"] and "deleted" not in written  # the tombstones' root instead
    with one_off_sessions(settings) as sessions, transaction(sessions) as session:
        tombstones_root = session.get(LedgerDigest, sealed["digest_id"]).document["tombstones_root"]
    assert sealed["tombstones_root"] == tombstones_root == written["tombstones_root"]  # both roots the seal names
    ring = keyring_from_settings(key_settings)
    signature_hash = signature_sha256(b64url_decode(jws.split(".")[2]))
    root = seal_list_root([signature_hash])
    assert ring.seal(old_kid) == KeySeal(old_kid, sealed["digest_id"], sealed["heads_root"], sealed["as_of"], (), 1, root,
                                         tombstones_root=tombstones_root)
    with one_off_sessions(settings) as sessions, transaction(sessions) as session:
        listed = with_seal_lists(ring, session).seal(old_kid).signed
    assert listed == {b64url_encode(signature_hash)}
    assert invoke("seal")["sealed"] == []  # sealed once
    seal_file.write_text("{}")
    with pytest.raises(SigningKeyError, match="malformed|unreadable"):
        keyring_from_settings(key_settings)


def test_a_sealed_key_is_refused_as_the_active_or_an_upcoming_key(key_settings, settings, clean_db, monkeypatch) -> None:
    """A rotation rolled back by hand, or a sealed key published again as the next one, would
    sign after its seal; the process refuses to start instead of writing such versions."""
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    active_file = Path(key_settings.active_signing_key_path)
    old_private = active_file.read_bytes()
    for step in ("rotate", "seal"):
        assert CliRunner().invoke(cli, ["signing-keys", step]).exit_code == 0
    new_private, ring = active_file.read_bytes(), keyring_from_settings(key_settings)
    [old_kid] = [key.kid for key in ring.retired]
    assert ring.seal(old_kid) is not None

    active_file.write_bytes(old_private)  # the old key put back by hand
    with pytest.raises(SigningKeyError, match=f"active signing key {old_kid} is sealed"):
        keyring_from_settings(key_settings)
    active_file.write_bytes(new_private)
    old_public = (Path(key_settings.retired_signing_keys_path) / f"{old_kid}.pem").read_bytes()
    (Path(key_settings.retired_signing_keys_path) / "generation-3.next.pem").write_bytes(old_public)
    with pytest.raises(SigningKeyError, match=f"upcoming signing key {old_kid} is sealed"):
        keyring_from_settings(key_settings)


@pytest.mark.parametrize("trouble", ["sealed", "unreadable"])
def test_a_worker_whose_signing_keys_cannot_be_used_refuses_to_start(settings, tmp_path, trouble) -> None:
    """Workers load keys lazily; without the start-up check this worker would start and fail
    every job it took, for good."""
    from models.keys import write_seal

    key, data_dir = generate_ed25519(), tmp_path / "data"
    own = load_settings(data_dir=data_dir)
    own.active_signing_key_path.parent.mkdir(parents=True)
    own.active_signing_key_path.write_bytes(key.private_pem())
    own.active_signing_key_path.chmod(0o600)
    own.retired_signing_keys_path.mkdir(parents=True)
    if trouble == "sealed":
        write_seal(own, KeySeal(key.kid, 1, "00" * 32, "2026-12-04T00:00:00.000000Z"))
        expected = f"active signing key {key.kid} is sealed"
    else:
        (own.retired_signing_keys_path / "old.pem").mkdir()  # a retired key that cannot be read
        expected = "old.pem: cannot be read"  # named, where it said only IsADirectoryError
    assert expected.encode() in worker_refusing_to_start(settings, PLANT_DATA_DIR=str(data_dir))


def worker_refusing_to_start(settings: Settings, **keys: str) -> bytes:
    """What a worker given these key settings (and none of the suite's) prints as it refuses to
    start: it must exit, not 0, saying so."""
    from tests.conftest import REPO_ROOT, child_env, stop_process_group

    env = {k: v for k, v in child_env(settings).items() if not k.startswith("PLANT_SIGNING_KEY") and k != "PLANT_RETIRED_SIGNING_KEYS_DIR"}
    process = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-P", "solo", "-Q", "default"],
                               cwd=REPO_ROOT, env=env | keys, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=60)
    finally:
        stop_process_group(process)
    assert process.returncode not in (0, None)
    assert b"refuses to start" in output, output[-2000:]
    return output


def test_a_rolling_rotation_s_old_processes_accept_what_the_upcoming_key_signs(rotated) -> None:
    """During a rollout, processes still on the old key verify versions the new key signs:
    the new key was published to them as an upcoming key one rollout earlier."""
    upcoming = generate_ed25519()
    rolled_out = KeyRing(upcoming, (rotated.old.verifier(), rotated.new.verifier()))  # the new revisions
    rotated.edit(rotated.skill, rolled_out, description="Signed by the key just made active")
    unaware = rotated.rotated  # a process from before the upcoming key was published
    assert "unknown-signing-key" in {f.code for f in verify_entity(rotated.session, entity=rotated.skill, keyring=unaware).findings}
    aware = KeyRing(rotated.new, (rotated.old.verifier(),), upcoming=(upcoming.verifier(),))
    assert verify_entity(rotated.session, entity=rotated.skill, keyring=aware).ok
    rotated.edit(rotated.skill, aware, description="An old process writes on top of it")  # no entity-tampered
    assert aware.sign(b"x")[0] == rotated.new.kid and aware.seal(upcoming.kid) is None


def test_an_upcoming_key_file_is_trusted_and_never_sealed(key_settings, settings, clean_db, monkeypatch) -> None:
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    upcoming = generate_ed25519()
    retired_dir = Path(key_settings.retired_signing_keys_path)
    retired_dir.mkdir(parents=True, exist_ok=True)
    (retired_dir / "generation-2.next.pem").write_bytes(upcoming.verifier().public_pem())
    ring = keyring_from_settings(key_settings)
    assert ring.verify(upcoming.kid, upcoming.sign(b"y" * 32), b"y" * 32)
    assert upcoming.kid not in {key.kid for key in ring.retired} and ring.active.kid != upcoming.kid
    assert upcoming.kid in {key["kid"] for key in ring.jwks()["keys"]}  # published with the others
    rotate = CliRunner().invoke(cli, ["signing-keys", "rotate", "--json"], catch_exceptions=False)
    old_kid = json.loads(rotate.stdout)["old_kid"]
    sealing = CliRunner().invoke(cli, ["signing-keys", "seal", "--json"], catch_exceptions=False)
    assert [s["kid"] for s in json.loads(sealing.stdout)["sealed"]] == [old_kid]  # the upcoming key is left alone
    assert not (retired_dir / f"{upcoming.kid}.seal.json").exists()
    assert keyring_from_settings(key_settings).verify(upcoming.kid, upcoming.sign(b"z" * 32), b"z" * 32)


def _publish_upcoming_key_and_rotate(key_settings) -> SigningKey:
    """An upcoming key published beside the retired ones (as the Terraform module does), then
    a rotation: one retired key to seal, and an upcoming key that must have signed nothing."""
    upcoming = generate_ed25519()
    retired_dir = Path(key_settings.retired_signing_keys_path)
    retired_dir.mkdir(parents=True, exist_ok=True)
    (retired_dir / "generation-2.next.pem").write_bytes(upcoming.verifier().public_pem())
    assert CliRunner().invoke(cli, ["signing-keys", "rotate"]).exit_code == 0
    return upcoming


def _an_early_version(session, ring, steward) -> None:  # the steward's row, rewritten with the upcoming key
    update_entity(session, entity_type=E.AGENT, entity_id=steward, changes={"description": "early"},
                  ctx=WriteContext("test", ring, HashingEmbedder()))


def _an_early_digest(session, ring, steward) -> None:
    store_digest(session, keyring=ring)


def _an_early_repair(session, ring, steward) -> None:
    session.execute(text("UPDATE agents SET description = 'edited by hand' WHERE id = :a"), {"a": steward})
    session.expire_all()
    restore_entity(session, entity_type=E.AGENT, entity_id=steward, keyring=ring, embedder=HashingEmbedder(),
                   actor="operator:test")


_SIGNED_EARLY = {"entity_versions": _an_early_version, "ledger_digests": _an_early_digest,
                 "entity_repairs": _an_early_repair}


@pytest.mark.parametrize("table", list(_SIGNED_EARLY))
def test_sealing_is_refused_once_an_upcoming_key_has_signed_something(
        key_settings, settings, clean_db, engine, monkeypatch, table) -> None:
    """An upcoming key signs nothing until it is made active: a version, digest or repair
    record it signed means a process ahead of the sealer, or a forgery with its private key.
    Sealing stops there, and only there: the registry is signed with keys the sealer trusts."""
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    upcoming = _publish_upcoming_key_and_rotate(key_settings)
    ring = keyring_from_settings(key_settings)
    with Session(engine) as session, session.begin():
        steward = bootstrap_steward(session, WriteContext("test", ring, HashingEmbedder()))
    with Session(engine) as session, session.begin():
        _SIGNED_EARLY[table](session, KeyRing(upcoming, (ring.active.verifier(),)), steward)
    refused = CliRunner().invoke(cli, ["signing-keys", "seal"])
    assert refused.exit_code == 1 and "nothing was sealed" in refused.stderr
    assert f"upcoming key(s) {upcoming.kid} (in {table}) signed records before becoming active" in refused.stderr
    assert list(Path(key_settings.retired_signing_keys_path).glob("*.seal.json")) == []


# Rows naming the upcoming key, INSERTed through SQL by someone without its private key:
# its kid is public (the JWKS), and none of these tables takes a DELETE.
_JUNK_NAMING = {
    "entity_versions": (
        "INSERT INTO entity_versions (entity_type, entity_id, version, content, content_hash, prev_link, link_hash, "
        "kid, signature, actor) VALUES ('agent', gen_random_uuid(), 1, '\\x7b7d', sha256('\\x7b7d'), :zeros, :hash, "
        ":kid, :signature, 'sql')"),
    "ledger_digests": (
        "INSERT INTO ledger_digests (as_of, entity_count, heads_root, kid, signature, document) VALUES (now(), 0, :hash, "
        "CAST(:kid AS text), CAST(:encoded AS text), jsonb_build_object('type', 'plant.ledger-digest.v2', 'as_of', "
        "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), 'entity_count', 0, "
        "'heads_root', encode(:hash, 'hex'), 'tombstone_count', 0, 'tombstones_root', encode(:zeros, 'hex'), "
        "'kid', CAST(:kid AS text), 'signature', CAST(:encoded AS text)))"),
    "entity_repairs": (
        "INSERT INTO entity_repairs (entity_type, entity_id, version, head_link_hash, finding, row_before, actor, "
        "repaired_at, kid, signature) VALUES ('agent', gen_random_uuid(), 1, :hash, 'row-content-mismatch', '{}', "
        "'sql', now(), :kid, :signature)"),
    "signed_exports": (  # the reviewer's row
        "INSERT INTO signed_exports (kid, document_sha256, jws, signature_sha256) VALUES (:kid, :hash, 'x..x', :zeros)"),
}


@pytest.mark.parametrize("table", list(_JUNK_NAMING))
def test_a_row_naming_an_upcoming_key_without_its_signature_does_not_stop_the_seal(
        key_settings, settings, clean_db, engine, monkeypatch, table) -> None:
    """One such row used to refuse every seal for good (an upcoming key is always published
    under the Terraform rolling rotation), and a retired key left unsealed is trusted for any
    date. Only a signature the upcoming key made counts; the operator is told of the rest."""
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    upcoming = _publish_upcoming_key_and_rotate(key_settings)
    signature = os.urandom(64)
    with engine.begin() as connection:
        connection.execute(text(_JUNK_NAMING[table]), {"kid": upcoming.kid, "hash": os.urandom(32), "zeros": bytes(32),
                                                       "signature": signature, "encoded": b64url_encode(signature)})
    sealing = CliRunner().invoke(cli, ["signing-keys", "seal", "--json"])
    assert sealing.exit_code == 0, sealing.stderr
    [sealed] = json.loads(sealing.stdout)["sealed"]
    assert (Path(key_settings.retired_signing_keys_path) / f"{sealed['kid']}.seal.json").exists()
    assert f"1 row(s) of {table} name upcoming key {upcoming.kid}" in sealing.stderr


def test_a_report_the_upcoming_key_signed_cannot_be_checked_so_it_is_reported_and_does_not_stop_the_seal(
        key_settings, settings, clean_db, engine, monkeypatch) -> None:
    """Plant keeps no copy of the reports it signs (only their SHA-256), so an export's JWS
    cannot be verified at the seal: a made-up one would be indistinguishable from it."""
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    upcoming = _publish_upcoming_key_and_rotate(key_settings)
    with Session(engine) as session, session.begin():
        signed_once(session, document=b'{"an":"early report"}', keyring=KeyRing(upcoming))
    sealing = CliRunner().invoke(cli, ["signing-keys", "seal"])
    assert sealing.exit_code == 0, sealing.stderr
    assert f"1 row(s) of signed_exports name upcoming key {upcoming.kid}" in sealing.stderr
    assert "cannot be checked" in sealing.stderr


def test_plant_signing_keys_seal_refuses_a_registry_whose_rows_point_off_their_chains(
        key_settings, settings, committed_steward, engine, monkeypatch) -> None:
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    assert CliRunner().invoke(cli, ["signing-keys", "rotate"]).exit_code == 0
    with engine.begin() as connection:
        connection.execute(text("UPDATE agents SET version = 99 WHERE id = :a"), {"a": committed_steward})
    refused = CliRunner().invoke(cli, ["signing-keys", "seal"])
    assert refused.exit_code == 1 and "do not point at the newest version" in refused.stderr
    assert list(Path(key_settings.retired_signing_keys_path).glob("*.seal.json")) == []


@pytest.mark.parametrize("given", ["env", "file"], ids=["Cloud Run: PLANT_SIGNING_KEY", "compose: a key file"])
def test_the_image_seal_keys_role_seals_a_read_only_mount_and_prints_each_seal(
        settings, committed_steward, engine, tmp_path, given) -> None:
    """`docker/entrypoint.sh seal-keys`, as the Cloud Run job runs it: the retired keys are
    a read-only volume, so the role seals a copy and prints the new seal, which deployed
    beside the key seals it. Compose gives the key as a file in root's /run/secrets, where
    the seal's lock file could not go: the role failed before sealing (helper-75)."""
    old = keyring_from_settings(settings).active  # the key the committed registry was signed with
    new = generate_ed25519()
    mounted, versions = tmp_path / "mounted", tmp_path / "versions"
    mounted.mkdir()
    versions.mkdir()
    # A secret volume may present its files as links into a hidden directory.
    (versions / "generation-1.pem").write_bytes(old.verifier().public_pem())
    (mounted / "generation-1.pem").symlink_to(versions / "generation-1.pem")
    mounted.chmod(0o555)  # as a reminder: root (CI) writes anyway, so the listing below is the check
    environment = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(tmp_path),
        "DATABASE_URL": settings.database_url, "PLANT_SIGNING_KEY": new.private_pem().decode(),
        "PLANT_RETIRED_SIGNING_KEYS_DIR": str(mounted), "PLANT_ROLE_FILE": str(tmp_path / "role"),
        "PLANT_DATA_DIR": str(tmp_path / "data"), "TMPDIR": str(tmp_path),
    }
    secrets_dir = tmp_path / "run-secrets"
    if given == "file":
        secrets_dir.mkdir()
        (secrets_dir / "plant_signing_key").write_bytes(new.private_pem())
        environment["PLANT_SIGNING_KEY_FILE"] = str(secrets_dir / "plant_signing_key")
        del environment["PLANT_SIGNING_KEY"]
    entrypoint = Path(__file__).resolve().parent.parent / "docker" / "entrypoint.sh"
    run = subprocess.run(["sh", str(entrypoint), "seal-keys"], env=environment, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in mounted.iterdir()) == ["generation-1.pem"]  # the mount is left alone
    if given == "file":  # nothing written beside the key (root writes anyway: the listing is the check)
        assert sorted(p.name for p in secrets_dir.iterdir()) == ["plant_signing_key"]
    [line] = [line for line in run.stdout.splitlines() if line.startswith("{")]
    seal = json.loads(line)
    assert seal["kid"] == old.kid
    # Deployed beside the key (as signing_key_seals does), the seal is loaded and checks out.
    deployed = tmp_path / "deployed"
    deployed.mkdir()
    (deployed / "generation-1.pem").write_bytes(old.verifier().public_pem())
    (deployed / f"{old.kid}.seal.json").write_text(line)
    ring = keyring_from_settings(load_settings(database_url=settings.database_url, data_dir=tmp_path / "data",
                                               signing_key=new.private_pem().decode(), retired_signing_keys_dir=deployed))
    assert ring.seal(old.kid) is not None and ring.seal(old.kid).digest_id == seal["digest_id"]
    with Session(engine) as session:
        assert seal_problems(session, ring) == []
    # Run again with the seal deployed: nothing new to seal, nothing printed.
    again = subprocess.run(["sh", str(entrypoint), "seal-keys"], capture_output=True, text=True, timeout=120,
                           env={**environment, "PLANT_RETIRED_SIGNING_KEYS_DIR": str(deployed)})
    assert again.returncode == 0, again.stderr
    assert not [line for line in again.stdout.splitlines() if line.startswith("{")]


class Handed:
    """Everything an old key signed outside the chain before its seal, then the seal with its list."""

    def __init__(self, session, steward, keyring) -> None:
        from models.canonical import canonical_bytes
        from models.certification import certify_skill
        from models.ledger_digest import build_digest
        from models.repair import repairs
        from tests.report_builders import recorded_report_signature
        from tests.test_certification import _skill

        self.session, self.old, self.new = session, generate_ed25519(), generate_ed25519()
        # The ring that signs with the old key trusts the steward's key too, as a deployment's
        # ring trusts the keys that signed its chains: a skill's governor is judged on its head.
        self.leaked = KeyRing(self.old, (keyring.active.verifier(),))
        ctx = WriteContext("test", self.leaked, HashingEmbedder())
        self.skill = _skill(session, ctx, steward, "Pipeline Engineering")
        self.certificate = certify_skill(session, skill_id=self.skill.id, notes=None, ctx=ctx).certificate
        session.execute(text("UPDATE skills SET name = 'edited by hand' WHERE id = :id"), {"id": self.skill.id})
        restore_entity(session, entity_type=E.SKILL, entity_id=self.skill.id, keyring=self.leaked, embedder=HashingEmbedder(),
                       actor="operator:test")
        [self.repair] = [record.as_json() for record in repairs(session, entity_id=self.skill.id)]
        # The hourly digest, held against the seal's; both verify the steward's chains too (signed by ``keyring``).
        self.stored = store_digest(session, keyring=KeyRing(self.old, (keyring.active.verifier(),)))
        self.handed_out = build_digest(self.stored.as_of, [(self.skill.id, bytes(32))], self.leaked)  # GET /ledger/digest
        self.report = {"type": "plant.audit-report.v1", "findings": [],
                       "run": {"id": "r", "created_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:10:00Z"}}
        self.jws = recorded_report_signature(session, self.report, self.leaked)  # an export
        self.report_document = canonical_bytes({"report": self.report, "signature": self.jws})
        self.seal_digest = store_digest(session, keyring=KeyRing(self.new, (self.old.verifier(), keyring.active.verifier())))

    def sealed(self, listed: tuple | None) -> KeyRing:
        from models.key_seals import with_seal_lists

        count, root = listed or (None, None)
        # Sealed later than everything above (in one test transaction the digest's as_of, the
        # transaction's start, comes before the certificate's issue time).
        seal = KeySeal(self.old.kid, self.seal_digest.id, bytes(self.seal_digest.heads_root).hex(),
                       "2999-01-01T00:00:00Z", (), count, root)
        return with_seal_lists(KeyRing(self.new, (self.old.verifier(),), (seal,)), self.session)


def test_a_seal_lists_what_its_key_signed_outside_the_chain_and_nothing_signed_since_verifies(db_session, steward, keyring) -> None:
    """Reports, repair records and certificates carry no chain position: a leaked sealed key
    could sign them backdated. The seal lists the ones the key signed (digests it does not:
    any read key could grow the list; they are held to the seal by their as_of)."""
    from models.canonical import canonical_bytes
    from models.certificates import certificate_statement, verify_certificate
    from models.errors import JwsError
    from models.key_seals import record_seal_list, seal_list_root, seal_problems, signed_outside_the_chain
    from models.ledger_digest import verify_digest
    from models.ledger_trust import stored_digest_problem
    from models.repair import verify_repair
    from models.reports import verify_report
    from tests.report_builders import signed_report

    handed = Handed(db_session, steward, keyring)
    expected = sorted(signature_sha256(b64url_decode(s)) for s in (
        handed.certificate["signature"], handed.repair["signature"], handed.jws.split(".")[2]))
    assert signed_outside_the_chain(db_session, handed.old.kid) == expected  # no digest is among them
    listed = record_seal_list(db_session, handed.old.kid)
    assert listed == (3, seal_list_root(expected))
    sealed = handed.sealed(listed)
    published = json.loads(json.dumps(sealed.jwks()))
    assert {k["kid"]: k.get("plant_sealed_signatures") for k in published["keys"]} == {
        handed.new.kid: None, handed.old.kid: sorted(b64url_encode(h) for h in expected)}
    assert seal_problems(db_session, sealed) == []

    # What the key signed before its seal still verifies, with the ring and with the published JWKS.
    assert verify_certificate(handed.certificate, skill_id=handed.skill.id, keyring=sealed)
    assert verify_repair(handed.repair, sealed) and stored_digest_problem(db_session, handed.stored, sealed) is None
    for keys in (sealed, published):
        assert verify_report(handed.report_document, keys).kid == handed.old.kid and verify_digest(handed.handed_out, keys)

    # What the leaked key signs now, dated long before the seal, does not.
    def resigned(record: dict, statement: bytes) -> dict:
        return {**record, "signature": b64url_encode(handed.leaked.sign(statement)[1])}

    forged_repair = {**handed.repair, "actor": "someone else", "repaired_at": "2020-01-01T00:00:00Z"}
    forged_repair = resigned(forged_repair, canonical_bytes({k: v for k, v in forged_repair.items() if k != "signature"}))
    forged_certificate = {**handed.certificate, "certificate_id": "SKILL-GEN-999", "issued_at": "2020-01-01T00:00:00Z"}
    forged_certificate = resigned(forged_certificate, certificate_statement(handed.skill.id, forged_certificate))
    assert verify_repair(forged_repair, handed.leaked)
    assert verify_certificate(forged_certificate, skill_id=handed.skill.id, keyring=handed.leaked)
    assert not verify_repair(forged_repair, sealed)
    assert not verify_certificate(forged_certificate, skill_id=handed.skill.id, keyring=sealed)
    backdated = {**handed.report, "run": {"id": "r", "created_at": "2020-01-01T00:00:00Z"}}
    forged_report = signed_report(backdated, handed.leaked)
    for keys in (sealed, published):
        with pytest.raises(JwsError, match="does not list this signature"):
            verify_report(forged_report, keys)
    unlisting = handed.sealed(None)  # a seal from before seals listed: only the dates are checked
    assert verify_report(forged_report, unlisting).kid == handed.old.kid and verify_repair(forged_repair, unlisting)


def test_a_seal_list_edited_in_the_database_refuses_everything_its_key_signed_outside_the_chain(db_session, steward, keyring) -> None:
    from models.key_seals import record_seal_list

    handed = Handed(db_session, steward, keyring)
    listed = record_seal_list(db_session, handed.old.kid)
    db_session.execute(text("INSERT INTO key_seal_signatures (kid, signature_sha256) VALUES (:k, :h)"),
                       {"k": handed.old.kid, "h": bytes(32)})  # a forgery's hash, slipped in
    _refuses_all_it_lists(db_session, handed, handed.sealed(listed))


def _refuses_all_it_lists(session, handed: Handed, sealed: KeyRing) -> None:
    """What a seal whose stored list does not match it answers: its key's repair record and
    report are refused, and every audit reports the seal."""
    from models.errors import JwsError
    from models.key_seals import seal_problems
    from models.repair import verify_repair
    from models.reports import verify_report

    assert not verify_repair(handed.repair, sealed)
    with pytest.raises(JwsError, match="does not list"):
        verify_report(handed.report_document, sealed)
    [problem] = seal_problems(session, sealed)
    assert "does not match its seal" in problem


def test_a_key_that_signed_before_exports_were_recorded_gets_a_seal_that_lists_nothing(db_session, steward, keyring) -> None:
    """Its reports from before migration 0010 are on no list; listing would call them forgeries."""
    from models.key_seals import record_seal_list

    handed = Handed(db_session, steward, keyring)
    db_session.execute(text("UPDATE signed_exports_began SET began_at = now() + interval '1 day'"))
    assert record_seal_list(db_session, handed.old.kid) is None
    assert db_session.scalar(text("SELECT count(*) FROM key_seal_signatures")) == 0
    db_session.execute(text("DELETE FROM signed_exports_began"))  # and without knowing when recording began:
    with pytest.raises(SigningKeyError, match="signed_exports_began is empty"):
        record_seal_list(db_session, handed.old.kid)


def test_the_published_jwks_of_a_listing_seal_fails_closed_on_a_malformed_list(db_session, steward, keyring) -> None:
    from models.errors import JwsError
    from models.key_seals import record_seal_list
    from models.reports import verify_report

    handed = Handed(db_session, steward, keyring)
    published = json.loads(json.dumps(handed.sealed(record_seal_list(db_session, handed.old.kid)).jwks()))
    entry = next(k for k in published["keys"] if k["kid"] == handed.old.kid)
    for malformed in (None, "all", {"x": 1}, [1, 2]):
        entry["plant_sealed_signatures"] = malformed
        with pytest.raises(JwsError, match="does not list"):
            verify_report(handed.report_document, published)


def test_a_seal_file_keeps_its_list_commitment_and_one_without_still_loads(key_settings) -> None:
    from models.keys import load_seal, write_seal

    key_settings.retired_signing_keys_path.mkdir(parents=True, exist_ok=True)
    listed = KeySeal("kid-a", 7, "ab" * 32, "2026-12-05T00:00:00.000000Z", (("e", "h"),), 2, "cd" * 32)
    assert load_seal(write_seal(key_settings, listed)) == listed and listed.lists
    older = KeySeal("kid-b", 7, "ab" * 32, "2026-12-05T00:00:00.000000Z")
    assert not load_seal(write_seal(key_settings, older)).lists
    for edit in ('"signed_count":"2"', '"signed_count":null'):
        path = write_seal(key_settings, KeySeal("kid-c", 7, "ab" * 32, "2026-12-05T00:00:00.000000Z", (), 2, "cd" * 32))
        path.write_text(path.read_text().replace('"signed_count":2', edit))
        with pytest.raises(SigningKeyError, match="malformed"):
            load_seal(path)


def test_leaves_a_sealed_key_attested_are_rehashed_not_trusted(db_session, monkeypatch) -> None:
    """A leaked copy of the key could attest leaf rows rewritten under any transaction id."""
    import models.ledger_trust

    world = Rotated(db_session, digest_before_the_seal=True)
    rehashed = []
    root_of = models.ledger_trust.root_of_leaf_hashes
    monkeypatch.setattr(models.ledger_trust, "root_of_leaf_hashes", lambda hashes: rehashed.append(1) or root_of(hashes))
    assert models.ledger_trust.stored_digest_problem(db_session, world.early_digest, world.rotated) is None and rehashed == []
    assert models.ledger_trust.stored_digest_problem(db_session, world.early_digest, world.sealed) is None and rehashed == [1, 1]  # its leaves, then its tombstones


def test_plant_entity_repairs_checks_a_sealed_key_s_records_against_its_seal_s_list(
        key_settings, settings, engine, clean_db, monkeypatch) -> None:
    from models.db import make_session_factory

    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    ring = keyring_from_settings(key_settings)
    with transaction(make_session_factory(engine)) as session:
        steward = bootstrap_steward(session, WriteContext("test", ring, HashingEmbedder()))
        industry = create_entity(session, entity_type=E.INDUSTRY, ctx=WriteContext("test", ring, HashingEmbedder()),
                                 data={"name": "Sealed Repairs", "code": "SRP", "governance_agent_id": steward})
    with engine.begin() as connection:
        connection.execute(text("UPDATE industries SET name = 'Renamed by hand' WHERE id = :i"), {"i": industry.id})

    def plant(*args: str):
        result = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    assert plant("entity", "restore", "industry", str(industry.id))["restored"]  # a repair record by the old key
    plant("signing-keys", "rotate")
    [sealed] = plant("signing-keys", "seal")["sealed"]
    assert sealed["signatures_listed"] == 1
    assert [(r["kid"], r["verified"]) for r in plant("entity", "repairs")] == [(ring.active.kid, True)]


def test_every_check_in_plant_reads_the_seal_s_list_and_one_that_did_not_would_fail_loudly(
        db_session, steward, keyring, app, monkeypatch) -> None:
    """The report page's repair flags, an audit against a digest handed back, and the JWKS all
    read the list; a check given a ring whose lists were never read raises instead of calling
    genuine documents forgeries."""
    import dataclasses

    from models.audit_runs import digest_findings, start_run
    from models.jobs import Job
    from models.key_seals import record_seal_list, seal_problems
    from models.repair import verify_repair
    from models.errors import SealListInvalid
    from models.report_view import report_view
    from web.api.registry import signing_keys
    from web.problems import STATUS_BY_ERROR
    from web.services import EXTENSION_KEY

    handed = Handed(db_session, steward, keyring)
    count, root = record_seal_list(db_session, handed.old.kid)
    seal = KeySeal(handed.old.kid, handed.seal_digest.id, bytes(handed.seal_digest.heads_root).hex(),
                   "2999-01-01T00:00:00Z", (), count, root)
    unread = KeyRing(handed.new, (handed.old.verifier(),), (seal,))  # as a process loads it from its key files
    with pytest.raises(RuntimeError, match="the list was not read"):
        verify_repair(handed.repair, unread)
    with pytest.raises(RuntimeError, match="the list was not read"):
        unread.jwks()

    job = Job(kind="audit.run", queue="audit", status="running", params={})
    db_session.add(job)
    db_session.flush()
    run = start_run(db_session, job_id=job.id, params={}, keyring=unread, embedder=EMBEDDER, chunk_entities=50_000)
    db_session.execute(text("UPDATE audit_runs SET created_at = now() + interval '1 hour' WHERE id = :id"), {"id": run.id})
    db_session.expire_all()
    from models.audit_record import sign_plan  # a run Plant started an hour later: its plan signed as such
    from models.audit_runs import AuditChunk, plan_repairs
    run = db_session.get(type(run), run.id)
    sign_plan(db_session, run, list(db_session.scalars(select(AuditChunk).where(AuditChunk.run_id == run.id))), unread,
              repairs=plan_repairs(db_session, run, unread))
    db_session.flush()
    view = report_view(db_session, run_id=run.id, keyring=unread)
    assert [(r["id"], r["verified"]) for r in view.repairs] == [(handed.repair["id"], True)]
    codes = {f.code for f in digest_findings(db_session, handed.handed_out, unread)}
    assert "digest-invalid" not in codes  # handed back, dated before the seal (its heads are made up)

    def published_jwks():
        with app.test_request_context():
            monkeypatch.setitem(app.extensions, EXTENSION_KEY, dataclasses.replace(services, keyring=unread))
            return signing_keys()

    services = app.extensions[EXTENSION_KEY]
    monkeypatch.setattr("web.api.registry.db_session", lambda: db_session)
    published = published_jwks()
    assert {k["kid"]: len(k.get("plant_sealed_signatures", [])) for k in published["keys"]} == {handed.new.kid: 0, handed.old.kid: 3}

    # An edit to the list after this process read it: the cached list stays right, and the
    # audit and the JWKS say the database's list is wrong.
    db_session.execute(text("INSERT INTO key_seal_signatures (kid, signature_sha256) VALUES (:k, :h)"),
                       {"k": handed.old.kid, "h": bytes(32)})
    assert verify_repair(handed.repair, with_seal_lists(unread, db_session))
    assert any("does not match its seal" in p for p in seal_problems(db_session, unread))
    with pytest.raises(SealListInvalid):
        published_jwks()
    assert dict(STATUS_BY_ERROR)[SealListInvalid] == 503


def test_a_finished_run_s_report_is_signed_once_per_key_even_where_signatures_are_randomised(db_session) -> None:
    """RSA-PSS signs the same report differently each time; every export hands out the first
    signature, so repeated exports cannot grow a seal's list (or the published JWKS)."""
    from models.key_material import generate_rsa4096

    ring = KeyRing(generate_rsa4096())
    first = signed_once(db_session, document=b'{"the":"report"}', keyring=ring)
    assert all(signed_once(db_session, document=b'{"the":"report"}', keyring=ring) == first for _ in range(3))
    other = signed_once(db_session, document=b'{"another":"report"}', keyring=ring)
    assert other != first and db_session.scalar(text("SELECT count(*) FROM signed_exports")) == 2


def test_a_recorded_export_signature_that_is_not_plant_s_is_never_handed_out(db_session) -> None:
    """A row INSERTed into signed_exports ahead of a report's first export (or with the
    append-only guard lifted, edited) was handed out as the report's signature on every
    export, to fail every check; then it made every export a 409, for good (the table
    refuses DELETE). Now Plant signs the report once more, records that signature under a
    second name only its key can compute, and hands that one out on every export."""
    from models.audit_record import AuditRecordInvalid
    from models.jws import verify_detached
    from models.signed_exports import second_name
    from models.key_material import generate_rsa4096

    ring, other = KeyRing(generate_rsa4096()), KeyRing(generate_ed25519())  # RSA-PSS: a new signature differs
    honest, stolen, garbage = b'{"the":"report"}', b'{"a report":"signed elsewhere"}', b'{"a report":"not exported yet"}'
    jws = signed_once(db_session, document=honest, keyring=ring)
    forged = {stolen: signed_once(db_session, document=stolen, keyring=other), garbage: "not.a.jws"}

    def rows() -> int:
        return db_session.scalar(text("SELECT count(*) FROM signed_exports WHERE kid = :k"), {"k": ring.active.kid})

    for document, bogus in forged.items():
        db_session.execute(text("INSERT INTO signed_exports (kid, document_sha256, jws, signature_sha256) "
                                "VALUES (:k, sha256(:d), :j, sha256('x'::bytea))"), {"k": ring.active.kid, "d": document, "j": bogus})
        handed, recorded = signed_once(db_session, document=document, keyring=ring), rows()
        assert handed != bogus and verify_detached(document, handed, ring).kid == ring.active.kid
        assert all(signed_once(db_session, document=document, keyring=ring) == handed for _ in range(2))
        assert rows() == recorded  # signed once
    lifted = signed_once(db_session, document=b'{"one":"more"}', keyring=ring)  # the same key's, over another report
    lift_guard(db_session, "UPDATE signed_exports SET jws = :j WHERE jws = :h", table="signed_exports", j=lifted, h=jws)
    handed = signed_once(db_session, document=honest, keyring=ring)
    assert handed not in (jws, lifted) and verify_detached(honest, handed, ring)
    # Only someone who holds the key can take the second name ahead: then it is a 409.
    taken = b'{"a report":"both names taken"}'
    for name in (sha256(taken), second_name(sha256(taken), ring)):
        db_session.execute(text("INSERT INTO signed_exports (kid, document_sha256, jws, signature_sha256) "
                                "VALUES (:k, :n, 'x..x', sha256('x'::bytea))"), {"k": ring.active.kid, "n": name})
    with pytest.raises(AuditRecordInvalid, match="not Plant's"):
        signed_once(db_session, document=taken, keyring=ring)


def test_an_insider_with_insert_only_cannot_block_the_signed_report_of_the_run_that_caught_them(
        db_session, skill, keyring) -> None:
    """A finished run's report bytes are predictable: one junk signed_exports row for their
    hash made every JSON and page export of the run that caught the insider a 409, for good.
    The report is signed and recorded under a second name, which the key's seal lists."""
    from models.canonical import canonical_bytes
    from models.key_seals import signed_outside_the_chain
    from models.report_view import report_view
    from models.reports import export_report, verify_report
    from tests.report_builders import build_report

    db_session.execute(text("UPDATE skills SET description = 'tampered by insider' WHERE id = :id"), {"id": skill.id})
    db_session.expire_all()
    summary, _ = run_audit(db_session, keyring)
    assert summary["non_compliant"] == 1
    run_id = db_session.scalar(text("SELECT id FROM audit_runs ORDER BY created_at DESC LIMIT 1"))
    predicted = sha256(canonical_bytes(build_report(db_session, run_id=run_id, keyring=keyring)))
    db_session.execute(text("INSERT INTO signed_exports (kid, document_sha256, jws, signature_sha256) VALUES (:k, :d, 'x..x', :s)"),
                       {"k": keyring.active.kid, "d": predicted, "s": os.urandom(32)})
    document = export_report(db_session, run_id=run_id, keyring=keyring)
    assert verify_report(document, keyring).kid == keyring.active.kid
    jws = json.loads(document)["signature"]
    assert export_report(db_session, run_id=run_id, keyring=keyring) == document
    assert report_view(db_session, run_id=run_id, keyring=keyring).signature.jws == jws  # the page's too
    assert signature_sha256(b64url_decode(jws.split(".")[2])) in signed_outside_the_chain(db_session, keyring.active.kid)


def test_a_report_naming_a_time_after_its_key_s_seal_is_refused_by_the_library_too(keyring) -> None:
    from models.errors import JwsError
    from models.reports import verify_report
    from tests.report_builders import signed_report
    from tests.conftest import ring_sealing

    sealed = ring_sealing(keyring, "2026-06-01T00:00:00Z")  # a seal that lists nothing: the dates still count
    early = {"type": "plant.audit-report.v1", "findings": [], "run": {"id": "r", "created_at": "2026-05-01T00:00:00Z"}}
    assert verify_report(signed_report(early, keyring), sealed).kid == keyring.active.kid
    late = {**early, "run": {"id": "r", "created_at": "2026-05-01T00:00:00Z", "finished_at": "2026-06-02T00:00:00Z"}}
    with pytest.raises(JwsError, match="names a time after its key's seal"):
        verify_report(signed_report(late, keyring), sealed)


def test_a_seal_list_re_split_in_the_database_refuses_everything_its_key_signed_outside_the_chain(
        db_session, steward, keyring) -> None:
    """The root hashes the sorted hashes run together, so rows [h1, h2] rewritten as
    [b"", h1 + h2] keep its count and root: a stored hash that is not 32 bytes makes the list
    one that does not match its seal, like any other edit."""
    from models.errors import SealListInvalid
    from models.key_seals import published_keyring, record_seal_list

    handed = Handed(db_session, steward, keyring)
    listed = record_seal_list(db_session, handed.old.kid)
    h1, h2, h3 = sorted(bytes(h) for h in db_session.scalars(
        text("SELECT signature_sha256 FROM key_seal_signatures WHERE kid = :k"), {"k": handed.old.kid}))
    db_session.execute(text("DELETE FROM key_seal_signatures WHERE kid = :k"), {"k": handed.old.kid})
    re_split = [b"", h1 + h2, h3]
    db_session.execute(text("INSERT INTO key_seal_signatures (kid, signature_sha256) VALUES (:k, :h)"),
                       [{"k": handed.old.kid, "h": h} for h in re_split])
    assert (len(re_split), seal_list_root(re_split)) == listed  # the count and the root cannot tell
    sealed = handed.sealed(listed)
    _refuses_all_it_lists(db_session, handed, sealed)
    with pytest.raises(SealListInvalid):
        published_keyring(KeyRing(handed.new, (handed.old.verifier(),), sealed.seals), db_session)


@pytest.fixture
def leaf_reads(monkeypatch) -> list[int]:
    """Every read of a seal digest's leaves, by digest id, in a process that has read none yet."""
    import models.seal_check as seal_check

    reads: list[int] = []
    real = seal_check.binary_row

    def counting(session, sql, params):
        if sql == seal_check._SEALED_LEAVES_SQL.replace("{table}", "ledger_digest_heads"):
            reads.append(params[0])
        return real(session, sql, params)

    monkeypatch.setattr(seal_check, "binary_row", counting)
    seal_check._sealed_leaves.clear()
    return reads


def test_each_seal_digest_is_read_once_per_process_however_many_sealings(db_session, leaf_reads) -> None:
    """A 16-entry FIFO read every digest again on every batch from the 17th sealing on (helper-74)."""
    from models.chain import history
    from models.seal_check import seal_findings

    keys = [generate_ed25519() for _ in range(19)]

    def ring(i: int, seals=()) -> KeyRing:
        return KeyRing(keys[i], tuple(k.verifier() for k in keys[:i]), tuple(seals))

    steward = bootstrap_steward(db_session, WriteContext("test", ring(0), HashingEmbedder()))
    skill = create_entity(db_session, entity_type=E.SKILL, ctx=WriteContext("test", ring(0), HashingEmbedder()), data={
        "governance_agent_id": steward, "name": "Many Rotations", "skill_key": "many-rotations", "category": "technical",
        "description": "v1"})
    seals = []
    for i in range(18):
        if i:
            update_entity(db_session, entity_type=E.SKILL, entity_id=skill.id, changes={"description": f"v{i + 1}"},
                          ctx=WriteContext("test", ring(i), HashingEmbedder()))
        digest = store_digest(db_session, keyring=ring(i + 1))
        seals.append(KeySeal(keys[i].kid, digest.id, bytes(digest.heads_root).hex(), digest.document["as_of"]))
    rows = history(db_session, entity_id=skill.id)
    for _ in range(3):  # three audit batches
        assert seal_findings(db_session, [(skill, rows)], ring(18, seals)) == {}
    assert sorted(leaf_reads) == sorted(seal.digest_id for seal in seals)


def test_leaves_that_fail_their_check_are_not_read_again_on_every_batch(rotated, leaf_reads, monkeypatch) -> None:
    import models.seal_check as seal_check

    for n in range(4):  # more batches
        rotated.make(E.INDUSTRY, ring=rotated.sealed, name=f"Industry {n}", code=f"IN{n}")
    # Naming the steward as governor checked its head, the seal's leaves with it, and this process
    # keeps leaves that passed: forget them, so the leaves are first read once they fail.
    seal_check._sealed_leaves.pop((rotated.seal.digest_id, rotated.seal.heads_root, rotated.seal.tombstones_root), None)
    lift_guard(rotated.session, "UPDATE ledger_digest_heads SET link_hash = sha256(link_hash) WHERE digest_id = :d "
               "AND entity_id = :e", table="ledger_digest_heads", d=rotated.seal.digest_id, e=rotated.gov["governance_agent_id"])
    leaf_reads.clear()
    assert rotated.skill.id in {entity for entity, _ in rotated.codes(rotated.sealed)[SEALED_CODE]}
    assert leaf_reads == [rotated.seal.digest_id]  # the failure stands for a while...
    monkeypatch.setattr(seal_check, "SEALED_LEAVES_RECHECK_SECONDS", 0.0)
    seal_check._sealed_leaves[(rotated.seal.digest_id, rotated.seal.heads_root, rotated.seal.tombstones_root)] = 0.0  # ...then the rows are read again
    rotated.codes(rotated.sealed)
    assert len(leaf_reads) > 1


def test_threads_meeting_unchecked_seal_leaves_read_them_once(monkeypatch) -> None:
    """Every gunicorn thread whose first write met a sealed key read and hashed the whole digest
    at once, each holding its entity's row lock (helper-74)."""
    import threading

    import models.seal_check as seal_check
    from models.merkle import merkle_root

    leaves = b"".join(uuid.UUID(int=i).bytes + bytes([i % 256]) * 32 for i in range(1, 2001))
    seal = KeySeal("k", 987654, merkle_root(leaves[i:i + 48] for i in range(0, len(leaves), 48)).hex(), "x")
    arrived, reads, got = threading.Semaphore(0), [], []

    def slow_read(session, sql, params):
        reads.append(params[0])
        for _ in range(8):  # every thread has asked before the first read ends
            assert arrived.acquire(timeout=30)
        return 2000, leaves

    def ask() -> None:
        arrived.release()
        got.append(seal_check.sealed_leaves(None, seal))

    monkeypatch.setattr(seal_check, "binary_row", slow_read)
    seal_check._sealed_leaves.clear()
    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 8 and all(leaves is not None for leaves in got) and reads == [987654]


def test_a_timeout_reading_seal_leaves_is_sqlalchemy_s_operational_error(rotated) -> None:
    """binary_row let psycopg's own error out: a 500 in the API, a permanent failure in a job (helper-74)."""
    import models.seal_check as seal_check
    from sqlalchemy.exc import OperationalError

    from tasks.runner import is_transient

    seal_check._sealed_leaves.clear()
    rotated.session.execute(text("SET LOCAL statement_timeout = 1"))
    with pytest.raises(OperationalError) as raised:
        seal_check.binary_row(rotated.session, "SELECT pg_sleep(1)", [])
    assert is_transient(raised.value)
