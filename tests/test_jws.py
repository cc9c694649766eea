"""Detached JWS: both algorithms, every tampering refused, offline checks from the JWKS alone."""

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from models.errors import PlantError
from models.jws import (
    REPORT_TYPE,
    JwsError,
    VerifiedSignature,
    b64url_decode,
    b64url_encode,
    find_verifier,
    sign_detached,
    verify_detached,
)
from models.signing import EDDSA, PS256, KeyRing, SigningKey
from models.key_material import generate_ed25519, generate_rsa4096

PAYLOAD = b'{"report":"quarterly","rows":[1,2,3]}'


@pytest.fixture(scope="module")
def ed_key() -> SigningKey:
    return generate_ed25519()


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return generate_rsa4096()  # one per module: RSA-4096 generation takes seconds


@pytest.fixture(scope="module")
def ring(ed_key: SigningKey, rsa_key: SigningKey) -> KeyRing:
    return KeyRing(ed_key, (rsa_key,))


@pytest.fixture(scope="module")
def published_jwks(ring: KeyRing) -> dict[str, Any]:
    """The JWKS as an auditor downloads it: plain JSON, no key objects."""
    return json.loads(json.dumps(ring.jwks()))


@pytest.fixture(params=[EDDSA, PS256])
def key(request: pytest.FixtureRequest, ed_key: SigningKey, rsa_key: SigningKey) -> SigningKey:
    return ed_key if request.param == EDDSA else rsa_key


def signed_with_header(key: SigningKey, header: dict[str, Any], payload: bytes = PAYLOAD) -> str:
    """A correctly signed detached JWS with an arbitrary protected header."""
    encoded = b64url_encode(json.dumps(header).encode())
    signature = key.sign(f"{encoded}.{b64url_encode(payload)}".encode())
    return f"{encoded}..{b64url_encode(signature)}"


def header_of(jws: str) -> dict[str, Any]:
    return json.loads(b64url_decode(jws.split(".")[0]))


def test_roundtrip(key: SigningKey) -> None:
    jws = sign_detached(PAYLOAD, key)
    assert verify_detached(PAYLOAD, jws, [key.verifier()]) == VerifiedSignature(key.kid, key.algorithm)


def test_compact_detached_form_and_header(key: SigningKey) -> None:
    jws = sign_detached(PAYLOAD, key)
    encoded_header, middle, _ = jws.split(".")
    assert middle == ""
    assert header_of(jws) == {"alg": key.algorithm, "kid": key.kid, "typ": REPORT_TYPE}
    assert "=" not in jws


def test_reattached_payload_is_a_standard_jws(key: SigningKey) -> None:
    """RFC 7515 Appendix F: put BASE64URL(payload) back in the middle and it is an ordinary JWS."""
    encoded_header, _, encoded_signature = sign_detached(PAYLOAD, key).split(".")
    signing_input = f"{encoded_header}.{base64.urlsafe_b64encode(PAYLOAD).rstrip(b'=').decode()}"
    assert key.verifier().verify(b64url_decode(encoded_signature), signing_input.encode())


def test_tampered_payload_fails(key: SigningKey) -> None:
    jws = sign_detached(PAYLOAD, key)
    with pytest.raises(JwsError, match="does not match"):
        verify_detached(PAYLOAD.replace(b"1", b"9"), jws, [key.verifier()])


def test_kid_swapped_in_the_header_fails(ring: KeyRing, ed_key: SigningKey, rsa_key: SigningKey) -> None:
    _, _, signature = sign_detached(PAYLOAD, ed_key).split(".")
    forged_header = b64url_encode(json.dumps({"alg": EDDSA, "kid": rsa_key.kid, "typ": REPORT_TYPE}).encode())
    with pytest.raises(JwsError):
        verify_detached(PAYLOAD, f"{forged_header}..{signature}", ring)


def test_alg_swapped_in_the_header_fails(key: SigningKey, ring: KeyRing) -> None:
    other_alg = PS256 if key.algorithm == EDDSA else EDDSA
    jws = signed_with_header(key, {"alg": other_alg, "kid": key.kid, "typ": REPORT_TYPE})
    with pytest.raises(JwsError, match=f"signs with {key.algorithm}"):
        verify_detached(PAYLOAD, jws, ring)


def test_signature_by_another_key_fails(ed_key: SigningKey, rsa_key: SigningKey) -> None:
    impostor = generate_ed25519()
    jws = signed_with_header(impostor, {"alg": EDDSA, "kid": ed_key.kid, "typ": REPORT_TYPE})
    with pytest.raises(JwsError, match="does not match"):
        verify_detached(PAYLOAD, jws, [ed_key.verifier(), rsa_key.verifier()])


def test_unknown_kid_fails(key: SigningKey) -> None:
    jws = sign_detached(PAYLOAD, key)
    with pytest.raises(JwsError, match="no published key") as caught:
        verify_detached(PAYLOAD, jws, [generate_ed25519().verifier()])
    assert isinstance(caught.value, PlantError)
    assert caught.value.code == "signature-invalid"


def test_alg_none_is_rejected(key: SigningKey) -> None:
    header = b64url_encode(json.dumps({"alg": "none", "kid": key.kid, "typ": REPORT_TYPE}).encode())
    with pytest.raises(JwsError, match="'none' is not accepted"):
        verify_detached(PAYLOAD, f"{header}..", [key.verifier()])


@pytest.mark.parametrize(
    "extra",
    [
        {"crit": ["exp"], "exp": 1},
        {"crit": ["b64"], "b64": False},
        {"b64": False},
        {"typ": "JWT"},
        {"typ": None},
        {"kid": 7},
        {"alg": "HS256"},
        {"alg": "RS256"},
    ],
    ids=["crit", "crit-b64", "b64-false", "typ-jwt", "typ-missing", "kid-not-text", "alg-hs256", "alg-rs256"],
)
def test_correctly_signed_but_unacceptable_headers_are_rejected(ed_key: SigningKey, extra: dict[str, Any]) -> None:
    header = {"alg": EDDSA, "kid": ed_key.kid, "typ": REPORT_TYPE, **extra}
    header = {name: value for name, value in header.items() if value is not None}
    with pytest.raises(JwsError):
        verify_detached(PAYLOAD, signed_with_header(ed_key, header), [ed_key.verifier()])


def test_unknown_non_critical_header_parameters_are_ignored(ed_key: SigningKey) -> None:
    header = {"alg": EDDSA, "kid": ed_key.kid, "typ": REPORT_TYPE, "cty": "json", "x-note": "hi"}
    assert verify_detached(PAYLOAD, signed_with_header(ed_key, header), [ed_key]).kid == ed_key.kid


def test_duplicate_header_members_are_rejected(ed_key: SigningKey) -> None:
    text = f'{{"alg":"{EDDSA}","kid":"{ed_key.kid}","typ":"{REPORT_TYPE}","alg":"{EDDSA}"}}'
    encoded = b64url_encode(text.encode())
    signature = ed_key.sign(f"{encoded}.{b64url_encode(PAYLOAD)}".encode())
    with pytest.raises(JwsError, match="duplicate"):
        verify_detached(PAYLOAD, f"{encoded}..{b64url_encode(signature)}", [ed_key])


def test_malformed_compact_strings_are_rejected(ed_key: SigningKey) -> None:
    jws = sign_detached(PAYLOAD, ed_key)
    header, _, signature = jws.split(".")
    attached = f"{header}.{b64url_encode(PAYLOAD)}.{signature}"
    nan_header = b64url_encode(b'{"alg": NaN}')
    bad_inputs: list[Any] = [
        "",
        "..",
        f"{header}.{signature}",
        f"{jws}.",
        attached,
        f"{header}..{signature}=",
        f"{header}..{signature[:-1]}*",
        f"{header[:-2]}..{signature}",
        f"{b64url_encode(b'[1,2]')}..{signature}",
        f"{b64url_encode(b'not json')}..{signature}",
        f"{nan_header}..{signature}",
        jws.encode(),
        None,
    ]
    for bad in bad_inputs:
        with pytest.raises(JwsError):
            verify_detached(PAYLOAD, bad, [ed_key.verifier()])
    with pytest.raises(JwsError):
        verify_detached(PAYLOAD.decode(), jws, [ed_key.verifier()])  # type: ignore[arg-type]


def test_an_offline_auditor_needs_only_the_published_jwks(
    published_jwks: dict[str, Any], ed_key: SigningKey, rsa_key: SigningKey
) -> None:
    for signer in (ed_key, rsa_key):
        verified = verify_detached(PAYLOAD, sign_detached(PAYLOAD, signer), published_jwks)
        assert verified == VerifiedSignature(signer.kid, signer.algorithm)
    with pytest.raises(JwsError):
        verify_detached(PAYLOAD, sign_detached(PAYLOAD, generate_ed25519()), published_jwks)


def test_unusable_or_lying_jwks_entries_are_skipped(published_jwks: dict[str, Any], ed_key: SigningKey) -> None:
    impostor = generate_ed25519()
    lying = {**impostor.public_jwk(), "kid": ed_key.kid}  # claims the real key's name
    ec_jwk = {"kty": "EC", "crv": "P-256", "kid": ed_key.kid, "x": "AA", "y": "AA"}
    forged_jws = signed_with_header(impostor, {"alg": EDDSA, "kid": ed_key.kid, "typ": REPORT_TYPE})
    with pytest.raises(JwsError, match="no published key"):
        verify_detached(PAYLOAD, forged_jws, {"keys": [lying, ec_jwk, "junk"]})
    genuine = sign_detached(PAYLOAD, ed_key)
    keys = {"keys": [lying, ec_jwk, *published_jwks["keys"]]}
    assert verify_detached(PAYLOAD, genuine, keys).kid == ed_key.kid
    with pytest.raises(JwsError, match="must be a list"):
        verify_detached(PAYLOAD, genuine, {"keys": "not a list"})


def test_every_key_source_works(ring: KeyRing, ed_key: SigningKey, rsa_key: SigningKey) -> None:
    jws = sign_detached(PAYLOAD, rsa_key)
    sources: list[Any] = [
        ring,
        ring.jwks(),
        {rsa_key.kid: rsa_key.verifier()},
        {"a name that is not the kid": rsa_key.verifier()},
        (key for key in (ed_key.verifier(), rsa_key.verifier())),
        [rsa_key],
    ]
    for source in sources:
        assert verify_detached(PAYLOAD, jws, source).alg == PS256


def test_find_verifier_matches_on_the_thumbprint_only(ed_key: SigningKey, rsa_key: SigningKey) -> None:
    assert find_verifier({rsa_key.kid: ed_key.verifier()}, rsa_key.kid) is None
    assert find_verifier([ed_key], ed_key.kid) == ed_key.verifier()
    with pytest.raises(JwsError):
        find_verifier(ec.generate_private_key(ec.SECP256R1()), ed_key.kid)  # type: ignore[arg-type]


def test_b64url_decode_is_strict() -> None:
    assert b64url_decode("AQ") == b"\x01"
    for bad in ["AQ==", "A", "AR", "A+", "A/", "A Q", "AQ\n"]:
        with pytest.raises(ValueError):
            b64url_decode(bad)
