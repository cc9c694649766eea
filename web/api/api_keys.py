"""Admin-only API key management: create (the plaintext is shown once), list, revoke."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from flask import Response, json
from flask_openapi3 import APIBlueprint, Tag

from web.auth import BEARER
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from models.api_keys import MAX_EXPIRY_DAYS, ApiKey, create_api_key, key_name_problem, list_api_keys, revoke_api_key
from models.canonical import normalize_text, rfc3339_utc
from web.openapi_headers import documents_headers, header
from web.schemas import API_PROBLEMS, QueryModel, problems
from web.services import db_session

KEY_NAME_MAX_LENGTH = 200  # models.api_keys.ApiKey.name: String(200)

api_keys_api = APIBlueprint("api_keys", __name__, url_prefix="/api/v1", abp_security=BEARER, abp_responses=API_PROBLEMS, abp_tags=[Tag(name="api-keys")])


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr = Field(min_length=1, max_length=KEY_NAME_MAX_LENGTH)
    scopes: list[Literal["read", "write", "admin"]] = Field(min_length=1, max_length=3)
    expires_in_days: StrictInt | None = Field(
        default=None, ge=1, le=MAX_EXPIRY_DAYS,
        description="the key stops working this many days from now (the server's clock); absent: it never expires")

    @field_validator("name")
    @classmethod
    def _a_name_that_shows_what_it_is(cls, name: str) -> str:
        # NFC, as registry names are stored: "Café" typed two ways is one name.
        name = normalize_text(name)
        if len(name) > KEY_NAME_MAX_LENGTH:  # NFC lengthens some (U+0958 is two code points): the column holds 200
            raise ValueError(f"a key's name is at most {KEY_NAME_MAX_LENGTH} characters in NFC; this one has {len(name)}")
        if (problem := key_name_problem(name)) is not None:
            raise ValueError(problem)
        return name


class ApiKeyOut(BaseModel):
    id: uuid.UUID
    name: str
    key_prefix: str
    scopes: list[str]
    created_at: str
    revoked_at: str | None
    expires_at: str | None = Field(description="when the key stops working; null: never")
    last_used_at: str | None = Field(description="when the key was last used, to within an hour; null: never used")


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="the bearer token; shown only in this response")


class ApiKeyList(BaseModel):
    items: list[ApiKeyOut]


class KeyPath(BaseModel):
    key_id: uuid.UUID


class RevokeQuery(QueryModel):
    leave_no_admin_key: bool = Field(
        default=False, description="true: revoke the last live admin key all the same (else 409 last-admin-key); "
                                   "then only a new PLANT_ADMIN_API_KEY and a deploy make another")


def key_resource(key: ApiKey) -> dict[str, Any]:
    return {
        "id": str(key.id), "name": key.name, "key_prefix": key.key_prefix, "scopes": list(key.scopes),
        "created_at": rfc3339_utc(key.created_at), "revoked_at": rfc3339_utc(key.revoked_at),
        "expires_at": rfc3339_utc(key.expires_at), "last_used_at": rfc3339_utc(key.last_used_at),
    }


KEY_LOCATION = header("the key's URL, `/api/v1/api-keys/{id}`: DELETE it to revoke the key")


@api_keys_api.post("/api-keys", responses={201: ApiKeyCreated, **problems(422)})
@documents_headers(responses={201: {"Location": KEY_LOCATION}})
def create_key(body: ApiKeyIn) -> Response:
    """Create a key, optionally expiring. Its plaintext is in this response only; Plant keeps a hash."""
    session = db_session()
    issued = create_api_key(session, name=body.name, scopes=list(body.scopes), expires_in_days=body.expires_in_days)
    session.commit()
    body_json = {**key_resource(issued.key), "key": issued.plaintext}
    response = Response(json.dumps(body_json), status=201, mimetype="application/json")
    response.headers["Location"] = f"/api/v1/api-keys/{issued.key.id}"
    return response


@api_keys_api.get("/api-keys", responses={200: ApiKeyList})
def list_keys() -> dict[str, Any]:
    """Every key, revoked ones included (never the plaintext)."""
    return {"items": [key_resource(k) for k in list_api_keys(db_session())]}


@api_keys_api.delete("/api-keys/<key_id>", responses={200: ApiKeyOut, **problems(404), **problems(409), **problems(422)})
def revoke_key(path: KeyPath, query: RevokeQuery) -> dict[str, Any]:
    """Revoke a key; it stops working on the next request. The last live admin key is 409
    ``last-admin-key`` unless ``leave_no_admin_key=true``."""
    session = db_session()
    key = revoke_api_key(session, key_id=path.key_id, leave_no_admin_key=query.leave_no_admin_key)
    session.commit()
    return key_resource(key)
