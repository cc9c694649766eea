"""Pruning digest leaf rows counts only the digests Plant signed.

Someone with INSERT on ``ledger_digests`` and no signing key could add unsigned or forged
rows dated now: counted among the newest ``keep_latest``, they made the next prune delete
the leaf rows of older real digests, the bases a new digest is checked from. The guard
(migration 0013) already refuses a row dated after now(), so a forged one is the latest
only until beat's next digest, and is reported (``digest-invalid``) meanwhile.
"""

import json
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from models.audit import stored_digest_invalid
from models.audit_tables import LedgerDigest
from models.ledger_compare import latest_digest
from models.ledger_store import prune_digest_leaves, store_digest
from models.key_material import generate_ed25519
from models.signing import KeyRing

INSERT_DIGEST = ("INSERT INTO ledger_digests (as_of, entity_count, heads_root, kid, signature, document) "
                 "VALUES (:as_of, :count, :root, :kid, :signature, CAST(:document AS jsonb)) RETURNING id")


def _forge(session: Session, **values: Any) -> int:
    row = {"as_of": None, "count": 0, "root": b"\x00" * 32, "kid": "k", "signature": "junk", "document": "{}", **values}
    statement = INSERT_DIGEST if row["as_of"] is not None else INSERT_DIGEST.replace(":as_of", "now()")
    return session.scalar(text(statement), row)


def _stored(engine: Engine, keyring: KeyRing, count: int) -> list[int]:
    """``count`` digests stored by Plant, one transaction each (so each has its own ``as_of``)."""
    ids = []
    for _ in range(count):
        with Session(engine) as session, session.begin():
            ids.append(store_digest(session, keyring=keyring).id)
    return ids


def _with_leaves(session: Session) -> set[int]:
    return set(session.scalars(text("SELECT DISTINCT digest_id FROM ledger_digest_heads")))


def test_forged_digests_dated_now_do_not_push_real_ones_leaves_out(
        engine: Engine, committed_steward: Any, keyring: KeyRing) -> None:
    real = _stored(engine, keyring, 3)
    with Session(engine) as session, session.begin():
        for document in ("{}", "[]", '"junk"', "[" * 3000 + "]" * 3000):  # unsigned rows dated now: newer than every real one
            _forge(session, document=document)
        forged = _forge(session, signature="")  # unsigned, no signature member, and leaf rows of its own
        session.execute(text("INSERT INTO ledger_digest_heads (digest_id, entity_id, entity_type, version, link_hash) "
                             "SELECT :forged, entity_id, entity_type, version, link_hash FROM ledger_digest_heads "
                             "WHERE digest_id = :real"), {"forged": forged, "real": real[2]})
    with Session(engine) as session, session.begin():
        assert prune_digest_leaves(session, keyring=keyring, keep_latest=2) > 0  # the oldest real digest's
    with Session(engine) as session:
        # helper-214: nothing newer than the newest kept digest is pruned (it may be signed by a
        # key this ring does not hold yet); the forged row's leaves go once a real digest is newer.
        assert _with_leaves(session) == {real[1], real[2], forged}
    [newest] = _stored(engine, keyring, 1)
    with Session(engine) as session, session.begin():
        assert prune_digest_leaves(session, keyring=keyring, keep_latest=2) > 0  # real[1]'s, the forged one's
    with Session(engine) as session:
        assert _with_leaves(session) == {real[2], newest}


def test_copies_of_a_signed_document_count_once_and_never_at_a_date_it_does_not_sign(
        engine: Engine, committed_steward: Any, keyring: KeyRing) -> None:
    """A copy of an old signed document, at its own ``as_of`` or dated now, is no newer digest."""
    real = _stored(engine, keyring, 3)
    with Session(engine) as session, session.begin():
        oldest = session.get(LedgerDigest, real[0])
        copy = {"count": oldest.entity_count, "root": bytes(oldest.heads_root), "kid": oldest.kid,
                "signature": oldest.signature, "document": json.dumps(oldest.document)}
        _forge(session, as_of=oldest.as_of, **copy)
        _forge(session, **copy)  # dated now(): its row's as_of is not the one its document signs
    with Session(engine) as session, session.begin():
        prune_digest_leaves(session, keyring=keyring, keep_latest=2)
    with Session(engine) as session:
        assert _with_leaves(session) == {real[1], real[2]}


def test_a_forged_latest_digest_is_reported_and_stays_the_latest_only_until_the_next_real_one(
        engine: Engine, committed_steward: Any, keyring: KeyRing) -> None:
    with Session(engine) as session, session.begin():
        first = store_digest(session, keyring=keyring).id
    with Session(engine) as session, session.begin():
        forged = _forge(session)
    with Session(engine) as session:
        latest = latest_digest(session)
        assert latest.id == forged  # reported, not trusted
        assert stored_digest_invalid(session, latest, keyring).code == "digest-invalid"
    with Session(engine) as session, session.begin():
        second = store_digest(session, keyring=keyring).id
        assert prune_digest_leaves(session, keyring=keyring, keep_latest=2) == 0  # the forged row is not one of the two
    with Session(engine) as session:
        assert latest_digest(session).id == second
        assert _with_leaves(session) == {first, second}


def test_a_prune_that_finds_no_digest_plant_signed_deletes_no_leaves(
        engine: Engine, committed_steward: Any, keyring: KeyRing) -> None:
    """A ring that knows none of the stored digests' keys (a key missing from it, every recent row
    failing its check) finds nothing it may keep: it keeps everything, not nothing (the latest
    digest's leaves are the incremental audit's base)."""
    real = _stored(engine, keyring, 3)
    with Session(engine) as session, session.begin():
        assert prune_digest_leaves(session, keyring=KeyRing(generate_ed25519()), keep_latest=2) == 0
    with Session(engine) as session:
        assert _with_leaves(session) >= set(real)
