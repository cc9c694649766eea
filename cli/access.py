"""``plant api-keys`` (over the API, admin scope) and ``plant signing-keys``.

API keys live in the database and are managed through the server. The signing key is a
file on the machine that runs Plant, so ``signing-keys rotate`` works on the key
directory from settings, not over HTTP; ``signing-keys list`` shows what the server
publishes.
"""

from __future__ import annotations

import uuid

import click

from cli.client import NEVER_SENT, ApiError
from cli.errors import PlantCliError
from cli.jobs import connect
from cli.local import local_settings
from cli.output import json_option, print_json, print_table
from models.api_keys import MAX_EXPIRY_DAYS
from models.canonical import visible_text
from models.db import one_off_sessions
from models.key_seals import seal_retired_keys
from models.signing import RETIRED_MEMBER, SEALED_AT_MEMBER, UPCOMING_MEMBER
from models.keys import UPCOMING_SUFFIX, promote_staged_key, rotate_signing_key, stage_signing_key
from models.settings import load_settings
from models.key_material import generate_ed25519, generate_rsa4096
from models.errors import SigningKeyError

SCOPES = ("read", "write", "admin")


@click.group("api-keys")
def api_keys() -> None:
    """Create, list and revoke API keys (needs an admin key)."""


@api_keys.command("create")
@click.argument("name")
@click.option("--scope", "scopes", type=click.Choice(SCOPES), multiple=True, default=("read",), show_default=True,
              help="Scope to grant (repeatable): read < write < admin.")
@click.option("--expires-in-days", type=click.IntRange(1, MAX_EXPIRY_DAYS), default=None,
              help="The key stops working this many days from now; without it, it never expires.")
@json_option
def create_key(name: str, scopes: tuple[str, ...], expires_in_days: int | None, as_json: bool) -> None:
    """Create a key called NAME; its secret is printed once and never again."""
    body: dict[str, object] = {"name": name, "scopes": list(dict.fromkeys(scopes))}
    if expires_in_days is not None:
        body["expires_in_days"] = expires_in_days
    try:
        key = connect().post("/api-keys", body, expect=("id", "name", "scopes", "key"))
    except ApiError as error:
        if error.status is not None or isinstance(error.__cause__, NEVER_SENT):
            raise
        # Created, maybe, with a secret no one saw: live until revoked.
        raise ApiError(f"{error}; the key may have been created all the same: `plant api-keys list` shows it by "
                       f"its name, `plant api-keys revoke ID` ends it") from error
    if as_json:
        print_json(key)
        return
    expiry = f", expires {key['expires_at']}" if key.get("expires_at") else ""
    click.echo(visible_text(f"created API key {key['id']} ({key['name']}, scopes {','.join(key['scopes'])}{expiry})"))
    click.echo(visible_text(key["key"]))
    click.echo("the key is shown only this once: store it now", err=True)


@api_keys.command("list")
@json_option
def list_keys(as_json: bool) -> None:
    """Every key, revoked ones included (never a secret)."""
    keys = connect().get("/api-keys", expect=("items",))["items"]
    if not isinstance(keys, list):
        raise ApiError("GET /api-keys answered without a list of items: is PLANT_URL a Plant API?")
    if as_json:
        print_json({"items": keys})
        return
    print_table(keys, [
        ("ID", lambda k: k["id"]), ("NAME", lambda k: k["name"]), ("PREFIX", lambda k: k["key_prefix"]),
        ("SCOPES", lambda k: k["scopes"]), ("CREATED", lambda k: k["created_at"]), ("REVOKED", lambda k: k["revoked_at"]),
        ("EXPIRES", lambda k: k.get("expires_at")), ("LAST USED", lambda k: k.get("last_used_at")),
    ])


@api_keys.command("revoke")
@click.argument("key_id", type=click.UUID)
@click.option("--leave-no-admin-key", is_flag=True,
              help="Revoke the last live admin key all the same: then only a new PLANT_ADMIN_API_KEY and a deploy "
                   "make another.")
@json_option
def revoke_key(key_id: uuid.UUID, leave_no_admin_key: bool, as_json: bool) -> None:
    """Revoke the key with id KEY_ID; it stops working on the next request."""
    query = "?leave_no_admin_key=true" if leave_no_admin_key else ""
    key = connect().delete(f"/api-keys/{key_id}{query}", expect=("id", "name", "revoked_at"))
    if as_json:
        print_json(key)
    else:
        click.echo(visible_text(f"revoked API key {key['id']} ({key['name']}) at {key['revoked_at']}"))


@click.group("signing-keys")
def signing_keys() -> None:
    """The chain signing key: rotate it locally, list what the server publishes."""


@signing_keys.command("rotate")
@click.option("--rsa", is_flag=True, help="Generate an RSA-4096 (PS256) key instead of Ed25519.")
@click.option("--stage", is_flag=True,
              help="Only publish a new key as upcoming (trusted, not yet signing); once every process has "
                   "restarted, `rotate --promote` makes it active.")
@click.option("--promote", is_flag=True, help="Make the staged key active.")
@json_option
def rotate(rsa: bool, stage: bool, promote: bool, as_json: bool) -> None:
    """Make a new active signing key; the old one is retired but still verifies what it signed.

    Works on the key files under PLANT_DATA_DIR (or PLANT_SIGNING_KEY_FILE and
    PLANT_RETIRED_SIGNING_KEYS_DIR), for processes that read them from this machine's
    disk (`make dev`, a host's services). Refused when PLANT_SIGNING_KEY is set. Running
    processes keep the key ring they loaded until they restart, so after a one-step rotation
    one that restarts before the others signs with a key they do not know yet, and they take
    its versions for tampering. In two steps there is no such window: `rotate --stage`
    publishes the next key as upcoming, every process restarts (and so trusts it), then
    `rotate --promote` makes it active.
    """
    if stage and promote:
        raise click.UsageError("--stage and --promote are two steps: restart every process between them")
    if promote and rsa:
        raise click.UsageError("--rsa applies to a new key: `rotate --stage --rsa` stages one")
    settings = load_settings()
    try:
        if stage:
            kid = stage_signing_key(settings, generate_rsa4096() if rsa else generate_ed25519())
        elif promote:
            old_kid, new_kid = promote_staged_key(settings)
        else:
            old_kid, new_kid = rotate_signing_key(settings, generate_rsa4096() if rsa else generate_ed25519())
    except SigningKeyError as exc:
        raise PlantCliError(exc.detail) from exc
    if stage:
        upcoming = settings.retired_signing_keys_path / f"{kid}{UPCOMING_SUFFIX}"
        if as_json:
            print_json({"staged_kid": kid, "upcoming_key_file": str(upcoming), "restart_required": True})
        else:
            click.echo(f"staged  {kid} (public key published as upcoming in {upcoming})")
        click.echo("restart every running API and worker process so they all trust it, then run "
                   "`plant signing-keys rotate --promote` to make it the active key", err=True)
        return
    retired_file = settings.retired_signing_keys_path / f"{old_kid}.pem"
    if as_json:
        print_json({"old_kid": old_kid, "new_kid": new_kid, "active_key_file": str(settings.active_signing_key_path),
                    "retired_key_file": str(retired_file) if old_kid != new_kid else None,
                    "promoted_staged_key": promote, "restart_required": True})
    elif old_kid == new_kid:  # a promotion cut short after the key went active: its leftovers went now
        click.echo(f"active  {new_kid} ({settings.active_signing_key_path}); it was active already, its staged copies "
                   "are removed")
    else:
        click.echo(f"retired {old_kid} (public key kept in {retired_file})")
        click.echo(f"active  {new_kid} ({settings.active_signing_key_path})")
    if promote:
        click.echo("restart every running API and worker process so they all sign with it; every process restarted "
                   "since the stage trusts it already, so their order does not matter", err=True)
    else:
        click.echo("restart every running API and worker process together (e.g. `make dev`): one that restarts "
                   "before the others signs with the new key, which they do not trust yet (`rotate --stage`, then "
                   "`rotate --promote`, avoids this); until then they keep signing with the old one", err=True)


@signing_keys.command("seal")
@json_option
def seal(as_json: bool) -> None:
    """Seal every retired key: from now on it signs nothing valid.

    Run it once every API and worker process has restarted on the active key. It stores a
    ledger digest signed by the active key (DATABASE_URL) and writes <kid>.seal.json next
    to each unsealed retired key; a version such a key signs later is `signed-after-seal`.
    The seal also lists every report, repair record and certificate the key signed (where
    Plant recorded them all), and its audit records (each run's close; a running run's plan
    and checkpoints so far); one it signs later does not verify. It refuses to seal once an
    upcoming key has signed a version, digest or repair record; rows that only name one are
    reported on stderr, and do not stop it.
    Copy the seal files wherever the retired keys are deployed, then restart again.
    """
    settings = local_settings()
    unverified: list[str] = []
    try:
        with one_off_sessions(settings) as sessions:
            seals = seal_retired_keys(settings, sessions, unverified=unverified)
    except SigningKeyError as exc:
        raise PlantCliError(exc.detail) from exc
    finally:
        for warning in unverified:  # junk in append-only tables: the operator should know it is there
            click.echo(f"warning: {warning}", err=True)
    if as_json:
        print_json({"sealed": [{"kid": s.kid, "digest_id": s.digest_id, "heads_root": s.heads_root,
                                "tombstones_root": s.tombstones_root, "as_of": s.as_of, "signatures_listed": s.signed_count}
                               for s in seals], "restart_required": bool(seals)})
        return
    if not seals:
        click.echo("every retired key is sealed already")
        return
    for sealed in seals:
        listed = (f"it lists the {sealed.signed_count} report, repair record, certificate and audit record signature(s) "
                  "the key made"
                  if sealed.lists else "it lists nothing the key signed outside the chain: the key signed before Plant "
                  "began recording the reports it hands out, so only their dates are checked")
        click.echo(f"sealed {sealed.kid} at digest {sealed.digest_id} ({sealed.as_of}); {listed}")
    click.echo("restart every running API and worker process so they all load the seals", err=True)


@signing_keys.command("list")
@json_option
def list_signing_keys(as_json: bool) -> None:
    """The JWK Set the server publishes: the active key first, then every key it only verifies
    with (upcoming and retired keys, each shown as such); --json output is a --jwks file."""
    jwks = connect().get("/signing-keys", expect=("keys",))
    if as_json:
        print_json(jwks)
        return
    keys = jwks["keys"]
    if not isinstance(keys, list) or not all(isinstance(jwk, dict) for jwk in keys):
        raise ApiError("GET /signing-keys answered without a list of keys: is PLANT_URL a Plant API?")
    active = _active_entry(keys)
    print_table(keys, [("KID", lambda k: k.get("kid")), ("ALG", lambda k: k.get("alg")),
                       ("ROLE", lambda k: _role(k, active=k is active))])


def _active_entry(keys: list[dict[str, object]]) -> dict[str, object] | None:
    """The entry of the key that signs: the first one the set marks neither upcoming nor
    retired. A set marks each retired key (``plant_retired``), so its order does not matter
    (RFC 7517 gives it no meaning); in one saved before it did, that is the first entry."""
    return next((jwk for jwk in keys if not _marked_not_signing(jwk)), None)


def _marked_not_signing(jwk: dict[str, object]) -> bool:
    return jwk.get(UPCOMING_MEMBER) is True or jwk.get(RETIRED_MEMBER) is True or SEALED_AT_MEMBER in jwk


def _role(jwk: dict[str, object], *, active: bool) -> str:
    """What a published key is for: it signs (active), will sign after the next rotation
    (upcoming), or only verifies what it signed (retired; sealed at a time, if it was). What
    the entry says of itself comes first: ``active`` only places an unmarked entry."""
    if jwk.get(UPCOMING_MEMBER) is True:
        return "upcoming"
    sealed = jwk.get(SEALED_AT_MEMBER)
    if isinstance(sealed, str):
        return f"retired, sealed {sealed}"
    return "active" if active and jwk.get(RETIRED_MEMBER) is not True else "retired"
