"""The signed ledger digest: deterministic, verifiable offline, and every alteration detected;
once stored, append-only in the database itself (migration 0013)."""

import base64
import datetime as dt
import hashlib
import json
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from models.ledger_compare import latest_digest
from models.ledger_digest import DIGEST_TYPE, build_digest, digest_with_leaves, verify_digest
from models.ledger_store import prune_digest_leaves, store_digest
from models.ledger_trust import stored_digest_problem
from models.signing import KeyRing, SigningKey
from models.key_material import generate_ed25519

# RFC 8037 §A.1's Ed25519 private key: Ed25519 signatures are deterministic, so the
# whole digest is a fixed function of its input.
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
AS_OF = dt.datetime(2024, 5, 1, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
HEADS = [
    (uuid.UUID("00000000-0000-4000-8000-000000000001"), hashlib.sha256(b"head one").digest()),
    (uuid.UUID("7fffffff-0000-4000-8000-000000000000"), hashlib.sha256(b"head two").digest()),
    (uuid.UUID("f0000000-0000-4000-8000-000000000000"), hashlib.sha256(b"head three").digest()),
]


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture(scope="module")
def fixed_key() -> SigningKey:
    private = ed25519.Ed25519PrivateKey.from_private_bytes(b64url_decode(RFC8037_D))
    return SigningKey.from_private_key(private)


@pytest.fixture(scope="module")
def ring(fixed_key: SigningKey) -> KeyRing:
    return KeyRing(fixed_key)


def expected_heads_root(heads: list[tuple[uuid.UUID, bytes]]) -> str:
    """The root of exactly three leaves, by hand: MTH = node(node(l0, l1), l2)."""
    leaf = [hashlib.sha256(b"\x00" + entity_id.bytes + link).digest() for entity_id, link in heads]
    left = hashlib.sha256(b"\x01" + leaf[0] + leaf[1]).digest()
    return hashlib.sha256(b"\x01" + left + leaf[2]).hexdigest()


def test_digest_is_deterministic_and_signs_the_canonical_object(ring: KeyRing, fixed_key: SigningKey) -> None:
    digest = build_digest(AS_OF, HEADS, ring)
    assert digest == build_digest(AS_OF, iter(HEADS), ring)
    heads_root = expected_heads_root(HEADS)
    assert {name: value for name, value in digest.items() if name != "signature"} == {
        "type": DIGEST_TYPE,
        "as_of": "2024-05-01T12:00:00.000000Z",
        "entity_count": 3,
        "heads_root": heads_root,
        "kid": fixed_key.kid,
    }
    signed = (
        '{"as_of":"2024-05-01T12:00:00.000000Z","entity_count":3,'
        f'"heads_root":"{heads_root}","type":"plant.ledger-digest.v1"}}'
    ).encode()
    assert "=" not in digest["signature"]
    assert fixed_key.verifier().verify(b64url_decode(digest["signature"]), signed)


def test_signature_verifies_from_ring_keys_and_published_jwks(ring: KeyRing, fixed_key: SigningKey) -> None:
    digest = json.loads(json.dumps(build_digest(AS_OF, HEADS, ring)))  # as an auditor receives it
    assert verify_digest(digest, ring)
    assert verify_digest(digest, json.loads(json.dumps(ring.jwks())))
    assert verify_digest(digest, [fixed_key.verifier()])
    assert not verify_digest(digest, [generate_ed25519().verifier()])


def test_a_rotated_out_key_still_verifies_old_digests(ring: KeyRing) -> None:
    digest = build_digest(AS_OF, HEADS, ring)
    assert verify_digest(digest, ring.rotate(generate_ed25519()).jwks())


ALTERATIONS = {
    "type": "plant.ledger-digest.v2",
    "as_of": "2024-05-01T12:00:00.000001Z",
    "entity_count": 4,
    "heads_root": hashlib.sha256(b"another root").hexdigest(),
    "kid": "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4l",
}


@pytest.mark.parametrize("member", sorted(ALTERATIONS))
def test_any_member_change_fails_verification(ring: KeyRing, member: str) -> None:
    digest = build_digest(AS_OF, HEADS, ring)
    assert verify_digest(digest, ring)
    assert not verify_digest({**digest, member: ALTERATIONS[member]}, ring)


def test_a_changed_added_or_missing_member_fails(ring: KeyRing) -> None:
    digest = build_digest(AS_OF, HEADS, ring)
    signature = digest["signature"]
    flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
    assert not verify_digest({**digest, "signature": flipped}, ring)
    assert not verify_digest({**digest, "signature": signature + "A"}, ring)
    assert not verify_digest({**digest, "note": "unsigned extra"}, ring)
    other = generate_ed25519()
    both = KeyRing(other, (ring.active,))
    assert verify_digest(digest, both)
    assert not verify_digest({**digest, "kid": other.kid}, both)
    for member in digest:
        assert not verify_digest({name: value for name, value in digest.items() if name != member}, ring)


@pytest.mark.parametrize(
    "garbage",
    [None, [], "digest", {"type": DIGEST_TYPE}],
)
def test_garbage_is_false_not_an_exception(ring: KeyRing, garbage: Any) -> None:
    assert verify_digest(garbage, ring) is False


def test_ill_typed_members_are_false(ring: KeyRing) -> None:
    digest = build_digest(AS_OF, HEADS, ring)
    for member, value in [
        ("entity_count", True),
        ("entity_count", -1),
        ("entity_count", 2**60),
        ("entity_count", 3.0),
        ("heads_root", digest["heads_root"].upper()),
        ("as_of", "\ud800"),
        ("as_of", 1714564800),
        ("signature", "not base64url!"),
        ("kid", None),
    ]:
        assert verify_digest({**digest, member: value}, ring) is False, member


def test_leaves_are_published_in_order_and_verify(ring: KeyRing) -> None:
    digest = digest_with_leaves(AS_OF, HEADS, ring)
    assert digest["leaves"] == [{"entity_id": str(entity_id), "head": link.hex()} for entity_id, link in HEADS]
    assert {name: value for name, value in digest.items() if name != "leaves"} == build_digest(AS_OF, HEADS, ring)
    assert verify_digest(json.loads(json.dumps(digest)), ring)


def test_leaves_that_do_not_hash_to_the_root_are_detected(ring: KeyRing) -> None:
    digest = digest_with_leaves(AS_OF, HEADS, ring)
    leaves = digest["leaves"]
    other_head = {**leaves[1], "head": hashlib.sha256(b"rewritten history").hexdigest()}
    other_id = {**leaves[1], "entity_id": "7fffffff-0000-4000-8000-000000000001"}
    for changed in [
        [leaves[0], other_head, leaves[2]],
        [leaves[0], other_id, leaves[2]],
        [leaves[1], leaves[0], leaves[2]],
        leaves[:2],
        [*leaves, leaves[2]],
        [leaves[0], {**leaves[1], "entity_id": leaves[1]["entity_id"].upper()}, leaves[2]],
        [leaves[0], {**leaves[1], "extra": 1}, leaves[2]],
        [leaves[0], "junk", leaves[2]],
        "not a list",
    ]:
        assert verify_digest({**digest, "leaves": changed}, ring) is False, changed


def test_unsorted_or_duplicate_heads_are_rejected(ring: KeyRing) -> None:
    with pytest.raises(ValueError, match="ascending"):
        build_digest(AS_OF, [HEADS[1], HEADS[0], HEADS[2]], ring)
    with pytest.raises(ValueError, match="ascending"):
        build_digest(AS_OF, [HEADS[0], HEADS[0]], ring)
    with pytest.raises(ValueError, match="ascending"):
        digest_with_leaves(AS_OF, [HEADS[2], HEADS[1]], ring)


def test_bad_inputs_are_rejected(ring: KeyRing) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build_digest(AS_OF.replace(tzinfo=None), HEADS, ring)
    with pytest.raises(ValueError):
        build_digest(AS_OF, [(HEADS[0][0], HEADS[0][1][:16])], ring)
    with pytest.raises(ValueError, match="not a UUID"):
        build_digest(AS_OF, [(str(HEADS[0][0]), HEADS[0][1])], ring)  # type: ignore[list-item]


def test_an_empty_ledger_has_the_empty_root(ring: KeyRing) -> None:
    digest = digest_with_leaves(AS_OF, [], ring)
    assert digest["entity_count"] == 0
    assert digest["heads_root"] == hashlib.sha256(b"").hexdigest()
    assert digest["leaves"] == []
    assert verify_digest(digest, ring)


@given(st.lists(st.uuids(), unique=True, max_size=20))
def test_uuid_order_is_byte_order(ids: list[uuid.UUID]) -> None:
    """Sorting ids in Python agrees with the byte order the leaves (and PostgreSQL) use."""
    assert sorted(ids) == sorted(ids, key=lambda entity_id: entity_id.bytes)


# A stored digest is what an incremental audit and the tampering check compare against:
# were the newest one deleted (or its as_of moved back), they would compare against an
# older one and miss what changed in between. So, like entity_versions, the table refuses
# UPDATE, DELETE and TRUNCATE, with triggers enabled ALWAYS (migration 0013).
EDITS_OF_A_STORED_DIGEST = [
    "DELETE FROM ledger_digests WHERE id = :id",
    "UPDATE ledger_digests SET as_of = as_of - interval '1 day' WHERE id = :id",
    "UPDATE ledger_digests SET keep_leaves = true, as_of = as_of - interval '1 day' WHERE id = :id",
    "UPDATE ledger_digests SET signature = '' WHERE id = :id",  # back to a placeholder, to be refilled
    "UPDATE ledger_digests SET leaves_attestation = '\\x00' WHERE id = :id",  # attested once, when stored
    # jsonb calls 5 and 5.0 equal: under cover of the mark, the signed document's count made a float
    "UPDATE ledger_digests SET keep_leaves = true, document = jsonb_set(document, '{entity_count}', "
    "to_jsonb(entity_count::numeric + 0.0)) WHERE id = :id",
    "TRUNCATE ledger_digests CASCADE",
    # A temporary table shadowing the digests' name, holding a row this transaction wrote:
    # the guard reads no table, so it cannot be pointed at one.
    "CREATE TEMP TABLE ledger_digests (id bigint); INSERT INTO pg_temp.ledger_digests VALUES (:id); "
    "UPDATE public.ledger_digests SET as_of = as_of - interval '1 year' WHERE id = :id",
]


@pytest.mark.parametrize("statement", EDITS_OF_A_STORED_DIGEST)
@pytest.mark.parametrize("replica", [False, True])
def test_a_stored_digest_refuses_update_delete_and_truncate_through_sql(
        engine: Engine, committed_steward: Any, keyring: KeyRing, statement: str, replica: bool) -> None:
    with Session(engine) as session, session.begin():
        newest = store_digest(session, keyring=keyring).id
    with Session(engine) as session:
        if replica:  # what a logical-replication apply worker runs under: ALWAYS triggers fire anyway
            session.execute(text("SET LOCAL session_replication_role = replica"))
        with pytest.raises(DBAPIError, match="ledger_digests is append-only") as refused:
            for part in statement.split("; "):
                session.execute(text(part), {"id": newest})
        assert refused.value.orig.sqlstate == "42501"  # insufficient_privilege, as entity_versions answers
        session.rollback()
    with Session(engine) as session:
        latest = latest_digest(session)
        assert latest.id == newest and not latest.keep_leaves
        assert stored_digest_problem(session, latest, keyring) is None


def test_digests_are_still_stored_marked_and_their_leaves_pruned_under_the_guard(
        engine: Engine, committed_steward: Any, keyring: KeyRing) -> None:
    """``store_digest`` fills its placeholder row in, and a seal marks it ``keep_leaves``:
    those are the only changes the table allows (a mark alone, never taken back). Pruning
    deletes leaf rows only, never a digest."""
    ids = []
    for n in range(4):
        with Session(engine) as session, session.begin():
            digest = store_digest(session, keyring=keyring)
            if n == 0:
                digest.keep_leaves = True  # as plant signing-keys seal marks its digest
            ids.append(digest.id)
    with Session(engine) as session, session.begin():
        leaves = session.scalar(text("SELECT count(*) FROM ledger_digest_heads WHERE digest_id = :d"), {"d": ids[1]})
        assert leaves > 0 and prune_digest_leaves(session, keyring=keyring, keep_latest=2) == leaves  # the second digest's, only
    with Session(engine) as session:
        assert list(session.scalars(text("SELECT id FROM ledger_digests ORDER BY id"))) == ids
        assert list(session.scalars(text("SELECT keep_leaves FROM ledger_digests ORDER BY id"))) == [True, False, False, False]
        assert set(session.scalars(text("SELECT DISTINCT digest_id FROM ledger_digest_heads"))) == {ids[0], ids[2], ids[3]}
        latest = latest_digest(session)
        assert latest.id == ids[-1] and latest.signature and latest.leaves_attestation is not None
        assert stored_digest_problem(session, latest, keyring) is None


def test_a_stored_digest_may_be_marked_to_keep_its_leaves_and_never_unmarked(
        engine: Engine, committed_steward: Any, keyring: KeyRing) -> None:
    with Session(engine) as session, session.begin():
        digest_id = store_digest(session, keyring=keyring).id
    with Session(engine) as session, session.begin():  # as a seal marks its digest: keeping leaves hides nothing
        session.execute(text("UPDATE ledger_digests SET keep_leaves = true WHERE id = :id"), {"id": digest_id})
    with Session(engine) as session:
        with pytest.raises(DBAPIError, match="ledger_digests is append-only"):
            session.execute(text("UPDATE ledger_digests SET keep_leaves = false WHERE id = :id"), {"id": digest_id})
        session.rollback()
        latest = latest_digest(session)
        assert latest.keep_leaves and stored_digest_problem(session, latest, keyring) is None


@pytest.mark.parametrize("as_of", ["'infinity'", "now() + interval '1 second'", "'9999-12-31'"])
def test_a_digest_dated_after_now_cannot_be_inserted_to_stay_the_latest_for_good(
        engine: Engine, committed_steward: Any, keyring: KeyRing, as_of: str) -> None:
    """Signed or not, a digest dated in the future would be the latest for every later audit,
    and the guard would keep it there: the database refuses it. (An unsigned one dated now is
    the latest only until beat's next digest, and every audit meanwhile says digest-invalid.)"""
    with Session(engine) as session, session.begin():
        newest = store_digest(session, keyring=keyring).id
    with Session(engine) as session:
        with pytest.raises(DBAPIError, match="dated after now") as refused:
            session.execute(text("INSERT INTO ledger_digests (as_of, entity_count, heads_root, kid, signature, document) "
                                 f"VALUES ({as_of}, 0, '\\x00', 'k', 'junk', '{{}}')"))
        assert refused.value.orig.sqlstate == "23514"
        session.rollback()
        placeholder = session.scalar(text("INSERT INTO ledger_digests (as_of, entity_count, heads_root, kid, signature, "
                                          "document) VALUES (now(), 0, '\\x00', '', '', '{}') RETURNING id"))
        with pytest.raises(DBAPIError, match="append-only"):  # a placeholder is filled in, never moved
            session.execute(text("UPDATE ledger_digests SET as_of = 'infinity' WHERE id = :id"), {"id": placeholder})
        session.rollback()
    with Session(engine) as session:
        assert latest_digest(session).id == newest


def test_a_digest_plant_signs_with_leaves_passes_its_own_check_whatever_a_row_s_version_says(
        db_session: Session, skill: Any, keyring: KeyRing) -> None:
    """A row edited to version 0 (its CHECK allows it) made ``?leaves=true`` sign a digest whose
    leaf Plant's own check refused, saying "its leaves do not hash to its heads_root", which was
    false (helper-68). Such a leaf leaves its version out; a malformed leaf is called that."""
    from models.ledger_digest import digest_problem
    from tests.test_audit import digest_of

    db_session.execute(text("UPDATE skills SET version = 0 WHERE id = :id"), {"id": skill.id})
    db_session.expire_all()
    digest = digest_of(db_session, keyring, with_leaves=True)
    assert digest_problem(digest, keyring) is None
    assert [leaf for leaf in digest["leaves"] if leaf["entity_id"] == str(skill.id)][0].keys() == {"entity_id", "head"}
    digest["leaves"][0]["version"] = 0
    assert digest_problem(digest, keyring) == "its leaves cannot be read: a leaf's version is a positive integer"


def test_a_stored_digest_s_document_signs_its_tombstones(keyring) -> None:
    """Type v2 (migration 0018): the tombstones' count and root are signed members, so none can
    be changed, dropped or added to a v1 document without the key."""
    from models.ledger_digest import STORED_DIGEST_TYPE, digest_problem, sign_root

    as_of = dt.datetime(2026, 12, 5, tzinfo=dt.UTC)
    stored = sign_root(as_of, 2, b"\x01" * 32, keyring, tombstones=(1, b"\x02" * 32))
    assert stored["type"] == STORED_DIGEST_TYPE and digest_problem(stored, keyring) is None
    assert digest_problem({**stored, "tombstone_count": 0}, keyring) == "its signature does not match its members"
    assert digest_problem({**stored, "tombstones_root": "03" * 32}, keyring) == "its signature does not match its members"
    dropped = {k: v for k, v in stored.items() if k not in ("tombstone_count", "tombstones_root")}
    assert digest_problem(dropped, keyring) == "its members are not a ledger digest's"
    assert digest_problem({**dropped, "type": DIGEST_TYPE}, keyring) == "its signature does not match its members"
    assert digest_problem({**sign_root(as_of, 2, b"\x01" * 32, keyring), "tombstone_count": 1}, keyring) == (
        "its members are not a ledger digest's")
    assert digest_problem({**stored, "tombstone_count": True}, keyring) == "its members are not a ledger digest's"
