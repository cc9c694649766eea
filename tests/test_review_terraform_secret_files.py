"""The secret files of each Cloud Run resource, pinned as literal data: the volumes, secrets,
pinned versions, mount paths and ``*_FILE`` variables the hand-written blocks of 7f9ba6a give,
so that a refactoring of terraform/modules/run keeps them.
"""

from __future__ import annotations

import re
from typing import Any

from tests.test_deploy_terraform import one, pod_template, run_resources

RUNTIME_URL = ("runtime-database-url", "runtime_database_url", "runtime_database_url", "/secrets/runtime-database-url",
               "DATABASE_URL_FILE", "/secrets/runtime-database-url/value")
REDIS_URL = ("redis-url", "redis_url", "redis_url", "/secrets/redis-url", "REDIS_URL_FILE", "/secrets/redis-url/value")
SIGNING_KEY = ("signing-key", "signing_key", "signing_key", "/secrets/signing-key", "PLANT_SIGNING_KEY_FILE",
               "/secrets/signing-key/value")
# (volume, secret_ids key, secret_versions key, mount path, variable, its value) per resource, as
# the hand-written blocks of 7f9ba6a had them.
EXPECTED_SECRET_FILES = {
    "api": {RUNTIME_URL, REDIS_URL, SIGNING_KEY},
    "worker": {RUNTIME_URL, REDIS_URL, SIGNING_KEY},
    "worker_audit": {RUNTIME_URL, REDIS_URL, SIGNING_KEY},
    "beat": {REDIS_URL},
    "flower": {REDIS_URL, ("flower-basic-auth", "flower_basic_auth", "flower_basic_auth", "/secrets/flower-basic-auth",
                           "PLANT_FLOWER_BASIC_AUTH_FILE", "/secrets/flower-basic-auth/value")},
    "migrate": {
        ("database-url", "database_url", "database_url", "/secrets/database-url", "DATABASE_URL_FILE",
         "/secrets/database-url/value"),
        ("runtime-role-password", "runtime_role_password", "runtime_role_password", "/secrets/runtime-role-password",
         "PLANT_RUNTIME_ROLE_PASSWORD_FILE", "/secrets/runtime-role-password/value"),
        ("bootstrap-admin-key", "bootstrap_admin_key", "bootstrap_admin_key", "/secrets/bootstrap-admin-key",
         "PLANT_ADMIN_API_KEY_FILE", "/secrets/bootstrap-admin-key/value"),
    },
    "seal_keys": {RUNTIME_URL, SIGNING_KEY},
}

def secret_file_rows(pod: dict[str, Any]) -> set[tuple[str, ...]]:
    """Each secret volume of an expanded pod with its mount and the variable naming its file."""
    container = one(pod["containers"])
    mounts = {m["name"]: m["mount_path"] for m in container.get("volume_mounts", [])}
    variables = {e["value"]: e["name"] for e in container.get("env", []) if e["name"].endswith("_FILE")}
    rows = set()
    for volume in pod.get("volumes", []):
        if "secret" not in volume:
            continue
        secret = one(volume["secret"])
        item = one(secret["items"])
        secret_id = re.fullmatch(r'\$\{var\.secret_ids\["([a-z_]+)"\]\}', secret["secret"])[1]
        version = re.fullmatch(r'\$\{var\.secret_versions\["([a-z_]+)"\]\}', item["version"])[1]
        mount = mounts[volume["name"]]
        file = f"{mount}/{item['path']}"
        rows.add((volume["name"], secret_id, version, mount, variables.pop(file), file))
    assert not variables, f"*_FILE variables naming no secret file: {variables}"
    return rows


def test_each_resource_gets_exactly_the_secret_files_it_had() -> None:
    found = {name: secret_file_rows(pod_template(kind, body)) for name, (kind, body) in run_resources().items()}
    assert found == EXPECTED_SECRET_FILES
