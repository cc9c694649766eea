"""Adversarial review of the ledger's evidence: the published key set, signed exports racing,
and what Merkle inclusion proofs bind (review: ledger digests, proofs, seals, exports).

The key set and verify commands are checked as an offline auditor uses them (keys made here;
where the CLI needs a server, an ``httpx.MockTransport`` answers as ``/signing-keys`` would);
signed exports race on the real PostgreSQL of the test fixtures, with real commits.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import cli.jobs as cli_jobs
from cli.client import PlantClient
from cli.main import cli
from models.audit_tables import SignedExport
from models.canonical import sha256
from models.merkle import head_leaf, inclusion_proof, merkle_root, verify_inclusion
from models.signed_exports import signed_once
from models.signing import RETIRED_MEMBER, UPCOMING_MEMBER, KeyRing, KeySeal
from models.key_material import generate_ed25519, generate_rsa4096
from tests.conftest import lock_waiters, wait_for

pytestmark = pytest.mark.usefixtures("no_server_log_lines")

SEALED_AT = "2026-06-01T00:00:00.000000Z"


def _ring_of_every_role() -> tuple[KeyRing, dict[str, str]]:
    active, retired, sealed, upcoming = (generate_ed25519() for _ in range(4))
    seal = KeySeal(kid=sealed.kid, digest_id=1, heads_root="00" * 32, as_of=SEALED_AT)
    ring = KeyRing(active, (retired.verifier(), sealed.verifier()), (seal,), upcoming=(upcoming.verifier(),))
    roles = {active.kid: "active", retired.kid: "retired", sealed.kid: f"retired, sealed {SEALED_AT}", upcoming.kid: "upcoming"}
    return ring, roles


# --- the published key set marks retired keys ---------------------------------------------------


def test_the_published_key_set_marks_each_retired_key_and_only_those() -> None:
    """Stop 40 noticed the JWKS marks upcoming and sealed keys but not retired ones: a retired,
    unsealed key's entry was the active key's, told apart only by standing first, an order
    RFC 7517 (section 5) gives no meaning. Each retired key's entry now says so."""
    ring, roles = _ring_of_every_role()
    marked = {jwk["kid"]: (jwk.get(RETIRED_MEMBER), jwk.get(UPCOMING_MEMBER)) for jwk in ring.jwks()["keys"]}
    assert {kid: marked[kid] for kid in roles} == {
        kid: ((True, None) if role.startswith("retired") else (None, True) if role == "upcoming" else (None, None))
        for kid, role in roles.items()}


def test_signing_keys_list_names_the_active_key_whatever_order_the_set_is_kept_in(monkeypatch) -> None:
    """A set re-ordered on its way (merged, sorted by a tool, served by a proxy that rewrites it)
    showed its first key, a retired one, as `active`, and the key that signs as `retired`."""
    ring, roles = _ring_of_every_role()
    reordered = {"keys": list(reversed(ring.jwks()["keys"]))}
    assert reordered["keys"][0]["kid"] != ring.active.kid
    monkeypatch.setenv("PLANT_URL", "http://plant.invalid")
    monkeypatch.setenv("PLANT_API_KEY", "k")
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=reordered))
    monkeypatch.setattr(cli_jobs, "PlantClient", lambda config: PlantClient(config, transport=transport))
    result = CliRunner().invoke(cli, ["signing-keys", "list"])
    assert result.exit_code == 0, result.output
    shown = {kid: line.split(kid, 1)[1].split(None, 1)[1].strip() for kid in roles
             for line in result.output.splitlines() if kid in line}
    assert shown == roles


def test_a_set_saved_before_retired_keys_were_marked_is_still_read_active_first() -> None:
    from cli.access import _active_entry, _role

    ring, roles = _ring_of_every_role()
    old = [{k: v for k, v in jwk.items() if k != RETIRED_MEMBER} for jwk in ring.jwks()["keys"]]
    active = _active_entry(old)
    assert {jwk["kid"]: _role(jwk, active=jwk is active) for jwk in old} == roles


# --- two exports of one finished run racing --------------------------------------------------------


@pytest.fixture(scope="module")
def pss_ring() -> KeyRing:
    """PS256 signatures are randomised: two exports that each signed would hand out two."""
    return KeyRing(generate_rsa4096())


def _recorded(engine: Any, ring: KeyRing, document: bytes) -> list[str]:
    with Session(engine) as session:
        return list(session.scalars(select(SignedExport.jws).where(
            SignedExport.kid == ring.active.kid, SignedExport.document_sha256 == sha256(document))))


@pytest.mark.parametrize("first_ends", ["commit", "rollback"])
def test_two_exports_of_one_report_racing_record_one_signature_and_hand_it_out(engine, clean_db, pss_ring,
                                                                                  first_ends) -> None:
    """The second export signs too (it saw no row), then waits on the first's uncommitted row:
    it must hand out the first's signature once that commits (not its own, which no seal would
    list), and record its own when the first rolls back (not none)."""
    document = b'{"report":"of a finished run","id":"%s"}' % uuid.uuid4().hex.encode()
    first = Session(engine)
    try:
        first_jws = signed_once(first, document=document, keyring=pss_ring)
        second: dict[str, Any] = {}

        def export_again() -> None:
            try:
                with Session(engine) as session:
                    second["jws"] = signed_once(session, document=document, keyring=pss_ring)
                    session.commit()
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                second["error"] = exc

        racing = threading.Thread(target=export_again)
        racing.start()
        wait_for(lambda: lock_waiters(engine) >= 1, timeout=30, what="the second export to wait on the first's row")
        getattr(first, first_ends)()
        racing.join(timeout=30)
        assert not racing.is_alive() and "error" not in second, second
    finally:
        first.close()
    recorded = _recorded(engine, pss_ring, document)
    assert len(recorded) == 1
    assert second["jws"] == recorded[0]
    assert (second["jws"] == first_jws) is (first_ends == "commit")
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(SignedExport)) == 1


# --- what an inclusion proof binds ---------------------------------------------------------------


def test_an_inclusion_proof_binds_the_leaf_and_its_index_within_the_signed_entity_count() -> None:
    """Within one tree size every proof verifies at its own index alone, and never for another
    leaf. Across sizes it does not: RFC 9162 takes the size from the signed tree head, as a
    ledger digest signs ``entity_count`` beside ``heads_root``; a verifier must take the size
    from there (the same root and proof verify as index 1 of 2 leaves and index 2 of 3)."""
    for size in range(1, 20):
        leaves = [head_leaf(uuid.UUID(int=i + 1), sha256(b"%d" % i)) for i in range(size)]
        root = merkle_root(leaves)
        for index in range(size):
            proof = inclusion_proof(leaves, index)
            assert [j for j in range(size) if verify_inclusion(leaves[index], j, size, proof, root)] == [index]
            assert not any(verify_inclusion(leaf, index, size, proof, root) for leaf in leaves if leaf != leaves[index])
    three = [b"a", b"b", b"c"]
    assert verify_inclusion(b"c", 1, 2, inclusion_proof(three, 2), merkle_root(three))  # why the size must be signed
