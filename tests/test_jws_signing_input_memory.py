"""A report's detached JWS is made over its signing input written into one buffer, a chunk of
the payload at a time: the same bytes as encoding the payload whole, with fewer copies of them.

A running run's JSON export and the report page sign a payload of some 200 bytes a finding
(about 40 MB at 200,000 findings). Encoding it whole (``b64url_encode``, then an f-string,
then ``encode``) held about four times the payload's base64 at once.
"""

from __future__ import annotations

import os
import tracemalloc

import pytest

from models import jws
from models.jws import b64url_encode, sign_detached, verify_detached
from models.key_material import generate_ed25519, generate_rsa4096
from models.signing import KeyRing, SigningKey

HEADER = "eyJhbGciOiJFZERTQSJ9"


def whole(encoded_header: str, payload: bytes) -> bytes:
    """The signing input as it was made: the payload encoded whole."""
    return f"{encoded_header}.{b64url_encode(payload)}".encode("ascii")


@pytest.mark.parametrize("chunk", [3, 6, jws.SIGNING_INPUT_CHUNK])
def test_the_signing_input_is_the_payload_encoded_whole(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(jws, "SIGNING_INPUT_CHUNK", chunk)
    for length in [*range(0, 20), 1_000, 1_001, 1_002]:
        payload = os.urandom(length)
        assert jws._signing_input(HEADER, payload) == whole(HEADER, payload), length
        assert jws._signing_input(HEADER, bytearray(payload)) == whole(HEADER, payload), length


@pytest.mark.parametrize("make_key", [generate_ed25519, generate_rsa4096])
def test_a_signature_over_a_payload_of_several_chunks_verifies(monkeypatch: pytest.MonkeyPatch, make_key: object) -> None:
    monkeypatch.setattr(jws, "SIGNING_INPUT_CHUNK", 3 * 7)
    key: SigningKey = make_key()  # type: ignore[operator]
    payload = bytearray(os.urandom(1_000))
    signed = sign_detached(payload, key)
    assert verify_detached(bytes(payload), signed, KeyRing(key)).kid == key.kid
    assert key.verifier().verify(jws.b64url_decode(signed.split(".")[2]), whole(signed.split(".")[0], bytes(payload)))


def test_signing_a_large_payload_holds_about_one_copy_of_its_base64() -> None:
    """Python's allocations while a 24 MB payload is signed, beyond the payload itself: its
    base64 is 32 MB; encoded whole it took about four times that."""
    key, payload = generate_ed25519(), bytearray(os.urandom(24_000_000))
    tracemalloc.start()
    try:
        sign_detached(payload, key)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.4 * 32_000_000, f"signing held {peak / 1e6:.0f} MB"


def test_the_signing_input_is_the_payload_encoded_whole_at_the_real_chunk_boundaries() -> None:
    """Payloads of one and two whole chunks (3 MiB), and one or two bytes either side: the
    last chunk's length is then 0, 1 or 2 modulo 3, so it pads with none, two or one ``=``."""
    chunk = jws.SIGNING_INPUT_CHUNK
    assert chunk % 3 == 0
    data = os.urandom(2 * chunk + 2)
    for length in (chunk - 2, chunk - 1, chunk, chunk + 1, chunk + 2, 2 * chunk - 1, 2 * chunk, 2 * chunk + 1, 2 * chunk + 2):
        payload = data[:length]
        assert jws._signing_input(HEADER, payload) == whole(HEADER, payload), length
