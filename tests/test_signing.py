"""Signing keys: RFC thumbprint vectors, both algorithms, rotation, key files, refusals."""

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from models.errors import PlantError
from models.signing import (
    EDDSA,
    PS256,
    KeyRing,
    SigningKey,
    SigningKeyError,
    VerifyingKey,
    jwk_thumbprint,
    public_key_thumbprint,
)
from models.key_material import ensure_key_file, generate_ed25519, generate_rsa4096, load_signing_key_pem, load_verifying_key_pem

# RFC 7638 §3.1: a 2048-bit RSA key, so we can name it but must refuse to use it.
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
    "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY3"
    "68QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4l"
    "Fd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
# RFC 8037 §A.1-A.4: an Ed25519 key pair, its thumbprint and a signature by it.
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
RFC8037_SIGNING_INPUT = b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
RFC8037_SIGNATURE = "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"

DATA = b"chain entry 42: skill certified"


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def flip_bit(data: bytes, index: int, mask: int = 0x01) -> bytes:
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return generate_rsa4096()


@pytest.fixture(params=["ed25519", "rsa4096"])
def any_key(request: pytest.FixtureRequest, rsa_key: SigningKey) -> SigningKey:
    return generate_ed25519() if request.param == "ed25519" else rsa_key


def test_rfc7638_rsa_thumbprint() -> None:
    members = {"kty": "RSA", "n": RFC7638_N, "e": "AQAB"}
    assert jwk_thumbprint(members) == RFC7638_THUMBPRINT
    public_key = rsa.RSAPublicNumbers(65537, int.from_bytes(b64url_decode(RFC7638_N), "big")).public_key()
    assert public_key_thumbprint(public_key) == RFC7638_THUMBPRINT


def test_rfc7638_key_is_refused_for_use_because_it_is_2048_bits() -> None:
    with pytest.raises(SigningKeyError, match="4096"):
        VerifyingKey.from_jwk({"kty": "RSA", "n": RFC7638_N, "e": "AQAB"})


def test_rfc8037_ed25519_thumbprint_and_signature() -> None:
    verifier = VerifyingKey.from_jwk({"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X})
    assert verifier.kid == RFC8037_THUMBPRINT
    signer = SigningKey.from_private_key(ed25519.Ed25519PrivateKey.from_private_bytes(b64url_decode(RFC8037_D)))
    assert signer.kid == RFC8037_THUMBPRINT
    assert signer.algorithm == EDDSA
    assert signer.sign(RFC8037_SIGNING_INPUT) == b64url_decode(RFC8037_SIGNATURE)
    assert verifier.verify(b64url_decode(RFC8037_SIGNATURE), RFC8037_SIGNING_INPUT)


def test_algorithms(rsa_key: SigningKey) -> None:
    assert generate_ed25519().algorithm == EDDSA
    assert rsa_key.algorithm == PS256
    assert rsa_key.private_key.key_size == 4096


def test_sign_and_verify(any_key: SigningKey) -> None:
    signature = any_key.sign(DATA)
    assert any_key.verifier().verify(signature, DATA)


def test_a_flipped_bit_fails_verification(any_key: SigningKey) -> None:
    signature = any_key.sign(DATA)
    verifier = any_key.verifier()
    assert not verifier.verify(signature, flip_bit(DATA, 3))
    assert not verifier.verify(flip_bit(signature, 0), DATA)
    assert not verifier.verify(flip_bit(signature, len(signature) - 1), DATA)
    assert not verifier.verify(signature[:-1], DATA)
    assert not verifier.verify(b"", DATA)


def _openssl_accepts(key: ed25519.Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data)
    except Exception:  # noqa: BLE001 - any refusal counts as "does not verify"
        return False
    return True


def test_ed25519_verification_agrees_with_openssl_on_every_single_bit_change() -> None:
    """Ed25519 is checked by libsodium; on every one-bit change of a signature or of the
    data, and on cut, padded and foreign signatures, it says what OpenSSL says."""
    key, other = generate_ed25519(), generate_ed25519()
    verifier = key.verifier()
    signature = key.sign(DATA)
    cases = [(signature, DATA), (other.sign(DATA), DATA), (signature[:-1], DATA), (signature + b"\0", DATA),
             (signature, DATA + b"\0"), (bytes(64), DATA)]
    cases += [(flip_bit(signature, bit // 8, 1 << bit % 8), DATA) for bit in range(8 * len(signature))]
    cases += [(signature, flip_bit(DATA, bit // 8, 1 << bit % 8)) for bit in range(8 * len(DATA))]
    verdicts = [(verifier.verify(s, d), _openssl_accepts(verifier.public_key, s, d)) for s, d in cases]
    assert [ours for ours, _ in verdicts] == [theirs for _, theirs in verdicts]
    assert [ours for ours, _ in verdicts].count(True) == 1  # only the untouched signature


def test_outside_auditor_verifies_with_the_published_jwk(any_key: SigningKey) -> None:
    published = any_key.public_jwk()
    assert published["kid"] == any_key.kid
    assert published["alg"] == any_key.algorithm
    assert published["use"] == "sig"
    assert "d" not in published and "p" not in published
    auditor_key = VerifyingKey.from_jwk(published)
    assert auditor_key.kid == any_key.kid
    assert auditor_key.verify(any_key.sign(DATA), DATA)


def test_a_jwk_whose_kid_is_not_its_thumbprint_is_refused() -> None:
    published = generate_ed25519().public_jwk()
    with pytest.raises(SigningKeyError, match="thumbprint"):
        VerifyingKey.from_jwk({**published, "kid": "someone-else"})


def test_a_jwk_with_the_wrong_alg_is_refused() -> None:
    published = generate_ed25519().public_jwk()
    with pytest.raises(SigningKeyError, match="alg"):
        VerifyingKey.from_jwk({**published, "alg": PS256})


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "OKP", "crv": "Ed25519"},
        {"kty": "OKP", "crv": "Ed25519", "x": "not base64!"},
        {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"},
        {"kty": "OKP", "crv": "X25519", "x": RFC8037_X},
        {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
    ],
)
def test_malformed_or_unsupported_jwks_are_refused(jwk: dict[str, str]) -> None:
    with pytest.raises(SigningKeyError):
        VerifyingKey.from_jwk(jwk)


def test_pem_round_trip(any_key: SigningKey) -> None:
    pem = any_key.private_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = load_signing_key_pem(pem)
    assert loaded.kid == any_key.kid
    assert any_key.verifier().verify(loaded.sign(DATA), DATA)


def test_repr_does_not_show_key_material(rsa_key: SigningKey) -> None:
    assert repr(rsa_key) == f"SigningKey(kid={rsa_key.kid!r}, algorithm='PS256')"


def _pem(private_key: object) -> bytes:
    return private_key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_rsa_2048_pem_is_refused() -> None:
    with pytest.raises(SigningKeyError, match="4096") as caught:
        load_signing_key_pem(_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    assert isinstance(caught.value, PlantError)
    assert caught.value.code == "signing-key-invalid"


def test_ec_pem_is_refused() -> None:
    with pytest.raises(SigningKeyError, match="Ed25519 and RSA"):
        load_signing_key_pem(_pem(ec.generate_private_key(ec.SECP256R1())))


def test_ec_public_pem_is_refused_as_a_retired_key() -> None:
    ec_public = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(SigningKeyError, match="Ed25519 and RSA"):
        load_verifying_key_pem(ec_public)  # how models.keys reads a retired key file


def test_encrypted_and_garbage_pems_are_refused() -> None:
    encrypted = generate_ed25519().private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(SigningKeyError, match="encrypted"):
        load_signing_key_pem(encrypted)
    with pytest.raises(SigningKeyError):
        load_signing_key_pem(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")


def test_keyring_signs_with_the_active_key_and_publishes_every_key(rsa_key: SigningKey) -> None:
    old, new = generate_ed25519(), rsa_key
    ring = KeyRing(old)
    old_kid, old_signature = ring.sign(DATA)
    assert old_kid == old.kid

    rotated = ring.rotate(new)
    new_kid, new_signature = rotated.sign(DATA)
    assert new_kid == new.kid != old.kid
    assert rotated.active is new
    assert rotated.verify(old_kid, old_signature, DATA)
    assert rotated.verify(new_kid, new_signature, DATA)
    assert not rotated.verify(old_kid, new_signature, DATA)
    assert [key["kid"] for key in rotated.jwks()["keys"]] == [new.kid, old.kid]
    assert not ring.verify(new_kid, new_signature, DATA)  # the original ring is unchanged


def test_keyring_unknown_kid_is_false() -> None:
    ring = KeyRing(generate_ed25519())
    kid, signature = ring.sign(DATA)
    assert ring.verify(kid, signature, DATA)
    assert ring.verify("no-such-kid", signature, DATA) is False


def test_rotating_back_to_a_retired_key_lists_it_once() -> None:
    first, second = generate_ed25519(), generate_ed25519()
    ring = KeyRing(first).rotate(second).rotate(first)
    assert [key["kid"] for key in ring.jwks()["keys"]] == [first.kid, second.kid]


def test_retired_keys_are_read_from_public_pems_only(rsa_key: SigningKey) -> None:
    """A private PEM is refused (models.key_material.load_verifying_key_pem): a retired key only verifies."""
    active, retired_ed25519 = generate_ed25519(), generate_ed25519()
    retired_public = rsa_key.verifier().public_pem()
    ring = KeyRing(active, tuple(load_verifying_key_pem(pem) for pem in (retired_ed25519.verifier().public_pem(), retired_public)))
    assert ring.active.kid == active.kid
    assert [key["kid"] for key in ring.jwks()["keys"]] == [active.kid, retired_ed25519.kid, rsa_key.kid]
    for private in (retired_ed25519, rsa_key):
        with pytest.raises(SigningKeyError, match="holds a private key"):
            load_verifying_key_pem(private.private_pem())
    assert ring.verify(rsa_key.kid, rsa_key.sign(DATA), DATA)
    assert ring.sign(DATA)[0] == active.kid


def test_the_active_key_must_be_a_private_pem() -> None:
    with pytest.raises(SigningKeyError):
        load_signing_key_pem(b"")
    with pytest.raises(SigningKeyError):
        load_signing_key_pem(generate_ed25519().verifier().public_pem())


def test_ensure_key_file_creates_a_private_file_once(tmp_path: Path) -> None:
    path = tmp_path / "data" / "keys" / "signing.pem"
    first = ensure_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_signing_key_pem(first).algorithm == EDDSA
    assert ensure_key_file(path) == first
    assert sorted(p.name for p in path.parent.iterdir()) == ["signing.pem"]  # no temp file left


def test_ensure_key_file_keeps_an_existing_key(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    existing = generate_ed25519().private_pem()
    path.write_bytes(existing)
    path.chmod(0o600)
    assert ensure_key_file(path) == existing
