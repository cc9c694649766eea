"""The secret files of each Cloud Run resource, made by dynamic blocks over local.secret_files,
are exactly those the hand-written blocks of 7f9ba6a made: the same volumes, secrets, pinned
versions, mount paths and ``*_FILE`` variables, pinned here as literal data. Also: each resource
takes its own identity's list, the tests' evaluation of local.secret_files agrees with
Terraform's, and the expander in tests/test_deploy_terraform.py refuses what it does not know.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.test_deploy_terraform import (MODULES, SECRETS, expand_secret_files, one, pod_template, run_locals,
                                         run_resources, secret_files_by_identity, terraform_console)

RUN_MAIN = MODULES / "run" / "main.tf"
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
# A required value for each variable of the run module without a default.
RUN_VARIABLES = {"project_id": "p", "region": "r", "name_prefix": "plant-dev", "image": "i", "network_id": "n",
                 "subnet_id": "s", "cloudsql_connection_name": "p:r:i", "cloudsql_instance_name": "i",
                 "runtime_role": "plant_runtime", "secret_ids": {}, "secret_versions": {}}


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


def written_secret_file_blocks(node: Any, found: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(block name, identity) of every dynamic block over local.secret_files in ``node``, as written."""
    if isinstance(node, list):
        for item in node:
            written_secret_file_blocks(item, found)
    elif isinstance(node, dict):
        for dynamic in node.get("dynamic", []):
            for name, spec in dynamic.items():
                match = re.fullmatch(r'\$\{local\.secret_files\["([a-z]+)"\]\}', spec["for_each"])
                if match:
                    found.append((name, match[1]))
        for item in node.values():
            written_secret_file_blocks(item, found)
    return found


def test_each_resource_takes_its_own_identity_s_secret_files() -> None:
    """worker and worker-audit share the identity worker; a resource reading another identity's
    list would get secrets its service account may not read (or miss its own)."""
    for name, (kind, body) in run_resources().items():
        pod = pod_template(kind, body)
        identity = re.fullmatch(r'\$\{google_service_account\.runtime\["([a-z]+)"\]\.email\}', pod["service_account"])[1]
        blocks = written_secret_file_blocks(body, [])
        assert sorted(blocks) == [("env", identity), ("volume_mounts", identity), ("volumes", identity)], name


def test_every_secret_but_the_retired_keys_has_one_file_name() -> None:
    local = run_locals()
    assert set(local["secret_file_names"]) == SECRETS
    for identity, files in secret_files_by_identity().items():
        assert [f["secret"] for f in files] == [s for s in local["secret_access"][identity] if s in SECRETS], identity
        assert len({f["variable"] for f in files}) == len(files), f"{identity}: two secrets under one variable"


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform CLI not installed")
def test_secret_files_evaluate_as_terraform_does(tmp_path: Path) -> None:
    """The run module's locals block, as written, evaluated by Terraform (no provider needed for
    locals): the tests' evaluation of local.secret_files gives the same lists in the same order."""
    shutil.copy(MODULES / "run" / "variables.tf", tmp_path / "variables.tf")
    locals_block = re.search(r"^locals \{\n.*?^\}\n", RUN_MAIN.read_text(), re.M | re.S)[0]
    (tmp_path / "main.tf").write_text(locals_block)
    assert terraform_console(tmp_path, "local.secret_files", RUN_VARIABLES) == secret_files_by_identity()


def test_the_expander_refuses_what_it_does_not_know() -> None:
    files = {"api": [{"secret": "redis_url", "volume": "redis-url", "mount_path": "/secrets/redis-url",
                      "variable": "REDIS_URL_FILE", "file": "/secrets/redis-url/value"}]}
    env = {"name": "${env.value.variable}", "value": "${env.value.file}"}
    assert expand_secret_files({"dynamic": [{"env": {"for_each": '${local.secret_files["api"]}', "content": [env]}}]},
                               files) == {"env": [{"name": "REDIS_URL_FILE", "value": "/secrets/redis-url/value"}]}
    volume = {"name": "${volumes.value.volume}", "secret": [{"secret": "${var.secret_ids[volumes.value.secret]}"}]}
    assert expand_secret_files({"dynamic": [{"volumes": {"for_each": '${local.secret_files["api"]}',
                                                         "content": [volume]}}]}, files) == {
        "volumes": [{"name": "redis-url", "secret": [{"secret": '${var.secret_ids["redis_url"]}'}]}]}
    wrong = [
        {"for_each": "${local.other}", "content": [env]},  # an unknown for_each
        {"for_each": '${local.secret_files["beat"]}', "content": [env]},  # an identity with no list
        {"for_each": '${local.secret_files["api"]}', "iterator": "${file}", "content": [env]},
        {"for_each": '${local.secret_files["api"]}', "content": [{"name": "${env.key}"}]},
        {"for_each": '${local.secret_files["api"]}', "content": [{"name": "${env.value.mode}"}]},
    ]
    for spec in wrong:
        with pytest.raises(AssertionError):
            expand_secret_files({"containers": [{"dynamic": [{"env": spec}]}]}, files)
    local = run_locals()
    local["secret_files"] = local["secret_files"].replace('if secret != "retired_signing_keys"', "")
    with pytest.raises(AssertionError, match="no expression secret_files_by_identity evaluates"):
        secret_files_by_identity(local)
