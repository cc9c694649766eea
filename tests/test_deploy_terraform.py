"""Static checks of terraform/: no cloud and no provider download needed.

Every .tf file parses (python-hcl2). Every resource block is checked against the Google
provider's own schema (tests/data/terraform-provider-schema.json, extracted by
terraform/tools/provider_schema.py), so an argument the provider does not have, such as
the `cloud_sql_instances` block the old system kept reaching for, fails here and not at
`terraform apply`. On top of that: module wiring, the Cloud SQL attachment of every role
that uses the database, the two database roles (only migrate connects as the schema owner),
Direct VPC egress to Redis, the secret references and their IAM grants, a single beat, and
no secrets in the example tfvars. A Cloud Run pod is read with the dynamic blocks of its secret
files expanded (expand_secret_files), as Terraform would make them from local.secret_files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest

from models.settings import load_settings

REPO = Path(__file__).resolve().parent.parent
TF = REPO / "terraform"
ROOT = TF / "environment"
MODULES = TF / "modules"
SCHEMA = json.loads((REPO / "tests" / "data" / "terraform-provider-schema.json").read_text())

EXPECTED_MODULES = {"network", "database", "cache", "secrets", "registry", "run"}
SECRETS = {"database_url", "runtime_database_url", "runtime_role_password", "redis_url", "signing_key",
           "flower_basic_auth", "bootstrap_admin_key"}
FILE_SECRETS = {"retired_signing_keys"}  # a directory of files, PLANT_RETIRED_SIGNING_KEYS_DIR
SIGNATURE_VERIFIERS = {"api", "worker", "worker_audit", "seal_keys"}
META_ARGUMENTS = {"count", "for_each", "depends_on", "provider", "lifecycle"}
RUN_KINDS = ("google_cloud_run_v2_service", "google_cloud_run_v2_worker_pool", "google_cloud_run_v2_job")


# --- Parsing -------------------------------------------------------------------------------


def tf_files() -> list[Path]:
    return sorted(p for p in TF.rglob("*.tf") if ".terraform" not in p.parts)


@cache
def parse(path: Path) -> dict[str, Any]:
    return hcl2.loads(path.read_text())


def is_marker(key: Any) -> bool:
    """python-hcl2's own keys (__is_block__, __comments__, __inline_comments__, ...)."""
    return isinstance(key, str) and key.startswith("__") and key.endswith("__")


def unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def clean(node: Any) -> Any:
    """The parsed tree without hcl2's markers and with string literals unquoted."""
    if isinstance(node, dict):
        return {unquote(k): clean(v) for k, v in node.items() if not is_marker(k)}
    if isinstance(node, list):
        return [clean(v) for v in node]
    return unquote(node)


@cache
def module_blocks(directory: Path) -> dict[str, Any]:
    """All top-level blocks of a module directory, merged across its files (raw form)."""
    merged: dict[str, Any] = {"resource": {}, "data": {}, "variable": {}, "output": {},
                              "module": {}, "locals": {}}
    for path in sorted(directory.glob("*.tf")):
        parsed = parse(path)
        for kind in ("resource", "data"):
            for block in parsed.get(kind, []):
                for rtype, named in block.items():
                    for name, body in named.items():
                        merged[kind][(unquote(rtype), unquote(name))] = body
        for kind in ("variable", "output", "module"):
            for block in parsed.get(kind, []):
                for name, body in block.items():
                    merged[kind][unquote(name)] = body
        for block in parsed.get("locals", []):
            merged["locals"].update({k: v for k, v in block.items() if not is_marker(k)})
    return merged


def resources(directory: Path, rtype: str) -> dict[str, dict[str, Any]]:
    return {name: clean(body) for (kind, name), body in module_blocks(directory)["resource"].items()
            if kind == rtype}


def tfvars(name: str) -> dict[str, Any]:
    return clean({k: v for k, v in hcl2.loads((ROOT / name).read_text()).items()})


def strings_in(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings_in(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings_in(v)]
    return [node] if isinstance(node, str) else []


def one(blocks: Any) -> dict[str, Any]:
    assert isinstance(blocks, list) and len(blocks) == 1, blocks
    return blocks[0]


# --- Files, layout and wiring -----------------------------------------------------------------


@pytest.mark.parametrize("path", tf_files(), ids=lambda p: str(p.relative_to(TF)))
def test_every_tf_file_parses(path: Path) -> None:
    assert isinstance(parse(path), dict)


@pytest.mark.parametrize("name", ["dev.tfvars", "prod.tfvars", "dev.gcs.tfbackend", "prod.gcs.tfbackend"])
def test_environment_files_parse(name: str) -> None:
    assert hcl2.loads((ROOT / name).read_text())


def test_module_layout() -> None:
    assert {p.name for p in MODULES.iterdir() if p.is_dir()} == EXPECTED_MODULES
    for module in EXPECTED_MODULES:
        assert {"main.tf", "variables.tf", "outputs.tf", "versions.tf"} <= {
            p.name for p in (MODULES / module).glob("*.tf")}, module
    calls = {name: clean(body) for name, body in module_blocks(ROOT)["module"].items()}
    assert {call["source"] for call in calls.values()} == {f"../modules/{m}" for m in EXPECTED_MODULES}


def test_module_calls_match_module_variables() -> None:
    for name, body in module_blocks(ROOT)["module"].items():
        call = clean(body)
        target = module_blocks((ROOT / call["source"]).resolve())
        declared = {n: clean(v) for n, v in target["variable"].items()}
        given = set(call) - {"source"} - META_ARGUMENTS
        assert given <= set(declared), f"module {name}: unknown inputs {given - set(declared)}"
        required = {n for n, v in declared.items() if "default" not in v}
        assert required <= given, f"module {name}: missing inputs {required - given}"


def test_module_outputs_used_by_the_root_exist() -> None:
    text = " ".join(strings_in(clean(module_blocks(ROOT)["module"]))
                    + strings_in(clean(module_blocks(ROOT)["output"])))
    calls = {name: clean(body)["source"] for name, body in module_blocks(ROOT)["module"].items()}
    for module, output in re.findall(r"module\.([a-z_]+)(?:\[[^\]]*\])?\.([a-z_]+)", text):
        source = (ROOT / calls[module]).resolve()
        assert output in module_blocks(source)["output"], f"module.{module}.{output}"


@pytest.mark.parametrize("name", ["dev.tfvars", "prod.tfvars"])
def test_tfvars_set_only_declared_variables_and_all_required_ones(name: str) -> None:
    declared = {n: clean(v) for n, v in module_blocks(ROOT)["variable"].items()}
    values = tfvars(name)
    assert set(values) <= set(declared), f"unknown variables {set(values) - set(declared)}"
    required = {n for n, v in declared.items() if "default" not in v}
    assert required <= set(values), f"missing {required - set(values)}"


@pytest.mark.parametrize("directory", [ROOT, *sorted(MODULES.iterdir())], ids=lambda p: p.name)
def test_references_resolve(directory: Path) -> None:
    """var.X, local.X and resource.name.attribute all point at something that exists."""
    blocks = module_blocks(directory)
    text = " ".join(strings_in(clean({kind: list(named.values()) if kind in ("resource", "data") else named
                                      for kind, named in blocks.items()})))
    declared_vars = set(blocks["variable"])
    for name in re.findall(r"\bvar\.([a-z0-9_]+)", text):
        assert name in declared_vars, f"{directory.name}: var.{name} is not declared"
    for name in re.findall(r"\blocal\.([a-z0-9_]+)", text):
        assert name in blocks["locals"], f"{directory.name}: local.{name} is not defined"
    declared = {(t, n) for t, n in blocks["resource"]}
    pattern = r"\b((?:google|random|tls)_[a-z0-9_]+)\.([a-z0-9_]+)(?:\[[^\]]*\])?(?:\.([a-z0-9_]+))?"
    for rtype, name, attribute in re.findall(pattern, text):
        assert (rtype, name) in declared, f"{directory.name}: {rtype}.{name} is not declared"
        if attribute:
            assert attribute in SCHEMA["resources"][rtype]["readable"], f"{rtype}.{name}.{attribute}"


# --- Every resource block against the provider schema ------------------------------------------


def check_block(body: dict[str, Any], schema: dict[str, Any], where: str) -> list[str]:
    problems = []
    # A list, not a dict: a block may have several dynamic blocks of one name (the secret files'
    # volumes beside the retired keys' one), and each is checked.
    dynamic = [(unquote(k), v) for d in body.get("dynamic", []) for k, v in d.items() if not is_marker(k)]
    for key, value in body.items():
        if is_marker(key) or key in META_ARGUMENTS or key == "dynamic":
            continue
        if key in schema["blocks"]:
            if not (isinstance(value, list) and all(isinstance(v, dict) and v.get("__is_block__") for v in value)):
                problems.append(f"{where}.{key} must be written as a block")
                continue
            nested = schema["blocks"][key]
            if nested["single"] and len(value) > 1:
                problems.append(f"{where}.{key} takes one block, got {len(value)}")
            for item in value:
                problems += check_block(item, nested, f"{where}.{key}")
        elif key in schema["attributes"]:
            if isinstance(value, list) and value and isinstance(value[0], dict) and value[0].get("__is_block__"):
                problems.append(f"{where}.{key} is an argument, not a block")
        else:
            problems.append(f"{where}.{key} does not exist in the provider schema")
    for key, spec in dynamic:
        if key not in schema["blocks"]:
            problems.append(f"{where}: dynamic {key} is not a block of this resource")
            continue
        for content in spec.get("content", []):
            problems += check_block(content, schema["blocks"][key], f"{where}.{key}")
    present = set(body) | {key for key, _ in dynamic}
    for key, spec in {**schema["attributes"], **schema["blocks"]}.items():
        if spec["required"] and key not in present and key != "id":
            problems.append(f"{where}.{key} is required")
    return problems


def all_resources() -> list[tuple[str, str, str, dict[str, Any]]]:
    found = []
    for path in tf_files():
        for block in parse(path).get("resource", []):
            for rtype, named in block.items():
                for name, body in named.items():
                    found.append((str(path.relative_to(TF)), unquote(rtype), unquote(name), body))
    return found


@pytest.mark.parametrize("where,rtype,name,body", all_resources(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_resource_matches_provider_schema(where: str, rtype: str, name: str, body: dict) -> None:
    assert rtype in SCHEMA["resources"], f"{rtype} not in the extracted schema: rerun terraform/tools/provider_schema.py"
    assert check_block(body, SCHEMA["resources"][rtype], f"{rtype}.{name}") == []


def test_schema_checker_catches_the_v1_style_attachment() -> None:
    """The checker itself: the historic mistakes must be reported."""
    service = SCHEMA["resources"]["google_cloud_run_v2_service"]
    wrong = {"name": '"x"', "location": '"r"', "template": [{
        "cloud_sql_instances": ['"p:r:i"'], "__is_block__": True,
        "containers": [{"image": '"i"', "__is_block__": True}]}]}
    assert any("cloud_sql_instances" in p for p in check_block(wrong, service, "svc"))
    annotated = {"name": '"x"', "location": '"r"', "metadata": [{"__is_block__": True}],
                 "template": [{"__is_block__": True}]}
    assert any("metadata" in p for p in check_block(annotated, service, "svc"))


def test_schema_checker_reads_every_dynamic_block_of_a_name() -> None:
    """A pod has two dynamic "volumes" blocks (its secret files and the retired keys): a mistake
    in the first must be reported, not hidden behind the second."""
    pool = SCHEMA["resources"]["google_cloud_run_v2_worker_pool"]
    volumes = [{'"volumes"': {"for_each": "${local.a}", "__is_block__": True,
                              "content": [{"name": '"a"', "no_such_argument": '"x"', "__is_block__": True}]}},
               {'"volumes"': {"for_each": "${local.b}", "__is_block__": True,
                              "content": [{"name": '"b"', "__is_block__": True}]}}]
    template = {"containers": [{"image": '"i"', "__is_block__": True}], "dynamic": volumes, "__is_block__": True}
    assert check_block({"name": '"x"', "location": '"r"', "template": [template]}, pool, "pool") == [
        "pool.template.volumes.no_such_argument does not exist in the provider schema"]


def test_provider_pins_cover_the_checked_schema() -> None:
    versions = clean(parse(ROOT / "versions.tf"))["terraform"][0]["required_providers"][0]
    google = versions["google"]
    assert google["source"] == "hashicorp/google"
    checked = SCHEMA["source"]["registry.terraform.io/hashicorp/google"]["version"]
    lower = re.search(r">=\s*([0-9.]+)", google["version"])[1]
    assert tuple(map(int, lower.split("."))) <= tuple(map(int, checked.split(".")))
    assert "<" in google["version"], "pin an upper bound: a new major version may remove arguments"


# --- Cloud Run: Cloud SQL, VPC, secrets, roles ------------------------------------------------


def run_resources() -> dict[str, tuple[str, dict[str, Any]]]:
    found = {}
    for kind in RUN_KINDS:
        for name, body in resources(MODULES / "run", kind).items():
            found[name] = (kind, body)
    return found


def pod_template(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The pod template of a Cloud Run resource (cleaned form), each dynamic block over its secret
    files expanded into the blocks Terraform makes of it (expand_secret_files)."""
    template = one(body["template"])
    pod = one(template["template"]) if kind == "google_cloud_run_v2_job" else template
    return expand_secret_files(pod, secret_files_by_identity())


# --- The secret files' dynamic blocks ----------------------------------------------------------

# local.secret_files as python-hcl2 writes it out: secret_files_by_identity() evaluates this
# expression and no other (test_secret_files_evaluate_as_terraform_does holds the two together).
SECRET_FILES_EXPRESSION = (
    "${{for identity, secrets in local.secret_access : identity => [for secret in secrets : "
    "{secret = secret, volume = local.secret_file_names[secret].volume, "
    'mount_path = "/secrets/${local.secret_file_names[secret].volume}", '
    "variable = local.secret_file_names[secret].variable, "
    'file = "/secrets/${local.secret_file_names[secret].volume}/value"} '
    'if secret != "retired_signing_keys"]}}')
SECRET_FILES_FOR_EACH = re.compile(r'\$\{local\.secret_files\["([a-z]+)"\]\}')
# Dynamic blocks left as written: the retired keys' directory, its files from a variable.
WRITTEN_FOR_EACH = {"${local.retired_keys_volumes}", "${var.retired_signing_key_files}"}


def secret_files_by_identity(local: dict[str, Any] | None = None) -> dict[str, list[dict[str, str]]]:
    """local.secret_files evaluated: identity => the secret files its containers get, in
    secret_access's order, each {secret, volume, mount_path, variable, file}."""
    local = run_locals() if local is None else local
    assert local["secret_files"] == SECRET_FILES_EXPRESSION, (
        f"local.secret_files is no expression secret_files_by_identity evaluates: {local['secret_files']}")
    names = local["secret_file_names"]
    return {identity: [{"secret": secret, "volume": names[secret]["volume"],
                        "mount_path": f"/secrets/{names[secret]['volume']}", "variable": names[secret]["variable"],
                        "file": f"/secrets/{names[secret]['volume']}/value"}
                       for secret in secrets if secret != "retired_signing_keys"]
            for identity, secrets in local["secret_access"].items()}


def substitute(node: Any, iterator: str, value: dict[str, str]) -> Any:
    """A dynamic block's content with ``<iterator>.value.<attribute>`` replaced by
    ``value[attribute]``: a whole interpolation by the text itself, a reference inside an
    expression (``var.secret_ids[volumes.value.secret]``) by a quoted string. Any other use of the
    iterator (``.key``, an attribute ``value`` lacks) fails."""
    if isinstance(node, dict):
        return {key: substitute(item, iterator, value) for key, item in node.items()}
    if isinstance(node, list):
        return [substitute(item, iterator, value) for item in node]
    if not isinstance(node, str):
        return node

    def attribute(match: re.Match[str]) -> str:
        assert match[1] in value, f"{iterator}.value.{match[1]}: no such attribute in {value}"
        return value[match[1]]

    node = re.sub(rf"\$\{{{iterator}\.value\.([a-z_]+)\}}", attribute, node)
    node = re.sub(rf"\b{iterator}\.value\.([a-z_]+)\b", lambda match: json.dumps(attribute(match)), node)
    assert not re.search(rf"\b{iterator}\.", node), f"a use of {iterator} these tests do not expand: {node}"
    return node


def expand_secret_files(node: Any, files: dict[str, list[dict[str, str]]]) -> Any:
    """``node`` (cleaned form) with every ``dynamic`` block whose for_each is
    ``local.secret_files["<identity>"]`` replaced by the blocks Terraform makes of it, one a
    secret file of that identity, at any depth. A dynamic block over WRITTEN_FOR_EACH stays as
    written; any other for_each, or an ``iterator`` argument, fails here rather than be guessed."""
    if isinstance(node, list):
        return [expand_secret_files(item, files) for item in node]
    if not isinstance(node, dict):
        return node
    expanded = {key: expand_secret_files(item, files) for key, item in node.items() if key != "dynamic"}
    kept = []
    for dynamic in node.get("dynamic", []):
        (name, spec), = dynamic.items()
        assert set(spec) == {"for_each", "content"}, f"dynamic {name}: these tests expand for_each and content only"
        match = SECRET_FILES_FOR_EACH.fullmatch(spec["for_each"])
        if match is None:
            assert spec["for_each"] in WRITTEN_FOR_EACH, f"dynamic {name}: no expansion known for {spec['for_each']}"
            kept.append({name: expand_secret_files(spec, files)})
            continue
        assert match[1] in files, f"dynamic {name}: local.secret_files has no identity {match[1]}"
        content = one(spec["content"])
        expanded[name] = expanded.get(name, []) + [
            expand_secret_files(substitute(content, name, file), files) for file in files[match[1]]]
    if kept:
        expanded["dynamic"] = kept
    return expanded


def env_secrets(pod: dict[str, Any]) -> dict[str, str]:
    """``*_FILE`` variable => logical secret name, for every secret the pod's container reads:
    each one a file of a secret volume (the pinned version of ``var.secret_ids[<name>]``) that
    the container mounts, named by the setting's ``*_FILE`` variable. A secret read into the
    environment (``value_source.secret_key_ref``) fails here: every child process would inherit it."""
    container = one(pod["containers"])
    mounts = {m["name"]: m["mount_path"] for m in container.get("volume_mounts", [])}
    files = {}
    for volume in pod.get("volumes", []):
        if "secret" not in volume:
            continue
        secret = one(volume["secret"])
        match = re.fullmatch(r'\$\{var\.secret_ids\["([a-z_]+)"\]\}', secret["secret"])
        assert match, f"{volume['name']}: secret must come from var.secret_ids, got {secret['secret']}"
        item = one(secret["items"])
        assert item["version"] == f'${{var.secret_versions["{match[1]}"]}}', volume["name"]
        files[f"{mounts[volume['name']]}/{item['path']}"] = match[1]
    found = {}
    for env in container.get("env", []):
        assert "value_source" not in env, f"{env['name']} comes from Secret Manager into the environment: mount it"
        if env["name"].endswith("_FILE"):
            assert env["value"] in files, f"{env['name']}: {env['value']} is no mounted secret file"
            found[env["name"]] = files[env["value"]]
    return found


def dynamic_block(node: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A ``dynamic "<name>"`` block of ``node`` (cleaned form), or None."""
    found = [d[name] for d in node.get("dynamic", []) if name in d]
    assert len(found) <= 1, found
    return found[0] if found else None


def volume_secrets(pod: dict[str, Any]) -> set[str]:
    """Logical names of the secrets a pod mounts as files (dynamic secret volumes)."""
    names = set()
    volume = dynamic_block(pod, "volumes")
    if volume is not None:
        ref = one(one(volume["content"])["secret"])["secret"]
        names.add(re.fullmatch(r'\$\{var\.secret_ids\["([a-z_]+)"\]\}', ref)[1])
    return names


def run_locals() -> dict[str, Any]:
    return clean(module_blocks(MODULES / "run")["locals"])


def test_roles_map_to_the_expected_cloud_run_kinds() -> None:
    roles = {}
    for kind, body in run_resources().values():
        container = one(pod_template(kind, body)["containers"])
        roles[tuple(container["args"])] = kind
    assert roles == {
        ("api",): "google_cloud_run_v2_service",
        ("flower",): "google_cloud_run_v2_service",
        ("worker",): "google_cloud_run_v2_worker_pool",
        ("worker-audit",): "google_cloud_run_v2_worker_pool",
        ("beat",): "google_cloud_run_v2_worker_pool",
        ("migrate",): "google_cloud_run_v2_job",
        ("seal-keys",): "google_cloud_run_v2_job",
    }


def test_every_database_user_mounts_cloud_sql_at_cloudsql() -> None:
    local = run_locals()
    assert local["cloudsql_mount"] == "/cloudsql"
    users = []
    for name, (kind, body) in run_resources().items():
        pod = pod_template(kind, body)
        container = one(pod["containers"])
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        sql_volumes = [n for n, v in volumes.items() if "cloud_sql_instance" in v]
        if "DATABASE_URL_FILE" not in env_secrets(pod):
            assert not sql_volumes, f"{name} does not use the database, so it must not mount it"
            continue
        users.append(name)
        assert sql_volumes == ["${local.cloudsql_volume}"], name
        instances = one(volumes["${local.cloudsql_volume}"]["cloud_sql_instance"])["instances"]
        assert instances == ["${var.cloudsql_connection_name}"], name
        mounts = {m["name"]: m["mount_path"] for m in container.get("volume_mounts", [])}
        assert mounts.get("${local.cloudsql_volume}") == "${local.cloudsql_mount}", name
    assert set(users) == {"api", "worker", "worker_audit", "migrate", "seal_keys"}


def test_every_volume_mount_names_a_volume() -> None:
    for name, (kind, body) in run_resources().items():
        pod = pod_template(kind, body)
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            for mount in container.get("volume_mounts", []):
                assert mount["name"] in volumes, f"{name}: mount {mount['name']} has no volume"


def test_no_v1_style_cloud_sql_attachment_anywhere() -> None:
    for path in tf_files():
        text = path.read_text()
        assert "cloud_sql_instances" not in text, path
        assert "cloudsql-instances" not in text, path  # the v1 run.googleapis.com annotation
        assert "google_cloud_run_service\"" not in text, path  # the v1 resource


def test_database_url_names_the_cloudsql_socket() -> None:
    output = clean(module_blocks(MODULES / "database")["output"]["database_url"])
    assert output["sensitive"] is True
    assert re.fullmatch(
        r"postgresql\+psycopg://\$\{google_sql_user\.app\.name\}:\$\{urlencode\(random_password\.app\.result\)\}"
        r"@/\$\{google_sql_database\.plant\.name\}\?host=/cloudsql/"
        r"\$\{google_sql_database_instance\.postgres\.connection_name\}",
        output["value"],
    ), output["value"]
    root = {n: clean(b) for n, b in module_blocks(ROOT)["module"].items()}
    assert root["secrets"]["secret_values"]["database_url"] == "${module.database.database_url}"
    assert root["run"]["cloudsql_connection_name"] == "${module.database.connection_name}"
    assert root["run"]["secret_ids"] == "${module.secrets.secret_ids}"


# The two database roles (README, "The database roles"): the schema owner can lift the
# append-only guards (ALTER TABLE ... DISABLE TRIGGER), so only the migrate job connects as it.
RUNTIME_DATABASE_USERS = {"api", "worker", "worker_audit", "seal_keys"}


def test_only_migrate_can_read_the_owners_database_url() -> None:
    local = run_locals()
    owners = {identity for identity, names in local["secret_access"].items() if "database_url" in names}
    assert owners == {"migrate"}
    # The grants are made from secret_access and nothing else; no project-wide accessor.
    access = resources(MODULES / "run", "google_secret_manager_secret_iam_member")
    assert list(access) == ["access"] and access["access"]["for_each"] == "${local.secret_grants}"
    assert "local.secret_access" in local["secret_grants"]
    for path in tf_files():
        for block in parse(path).get("resource", []):
            for rtype, named in block.items():
                for name, body in named.items():
                    if "secretmanager" in str(clean(body).get("role", "")):
                        assert (unquote(rtype), unquote(name)) == ("google_secret_manager_secret_iam_member", "access")
    # Only the migrate job's container reads it: one reference in the whole configuration.
    readers = [name for name, (kind, body) in run_resources().items()
               if "database_url" in env_secrets(pod_template(kind, body)).values()]
    assert readers == ["migrate"]
    # Nothing else names a secret: the grants take theirs from secret_access, every secret volume
    # from local.secret_files (made from secret_access too) but the retired keys' directory.
    text = "".join(path.read_text() for path in tf_files())
    assert set(re.findall(r"var\.secret_(?:ids|versions)\[([^\]]+)\]", text)) == {
        "each.value.secret", "volumes.value.secret", '"retired_signing_keys"'}


def test_everything_else_connects_as_the_runtime_role() -> None:
    users = set()
    for name, (kind, body) in run_resources().items():
        pod = pod_template(kind, body)
        url = env_secrets(pod).get("DATABASE_URL_FILE")
        if url is None or name == "migrate":
            continue
        users.add(name)
        assert url == "runtime_database_url", f"{name} must connect as the runtime role, not as {url}"
        identity = re.fullmatch(r'\$\{google_service_account\.runtime\["([a-z]+)"\]\.email\}', pod["service_account"])[1]
        assert "runtime_database_url" in run_locals()["secret_access"][identity], name
    assert users == RUNTIME_DATABASE_USERS


def test_migrate_creates_and_grants_the_runtime_role(monkeypatch) -> None:
    _, job = run_resources()["migrate"]
    pod = pod_template("google_cloud_run_v2_job", job)
    container = one(pod["containers"])
    secrets = env_secrets(pod)
    assert secrets["DATABASE_URL_FILE"] == "database_url"  # the owner, who may create the role and grant it
    assert secrets["PLANT_RUNTIME_ROLE_PASSWORD_FILE"] == "runtime_role_password"
    plain = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert plain["PLANT_RUNTIME_ROLE"] == "${var.runtime_role}"
    assert {"runtime_role_password", "database_url"} <= set(run_locals()["secret_access"]["migrate"])
    # The root wires the database module's role and password into the job...
    root = {n: clean(b) for n, b in module_blocks(ROOT)["module"].items()}
    assert root["run"]["runtime_role"] == "${module.database.runtime_user_name}"
    assert root["secrets"]["secret_values"]["runtime_role_password"] == "${module.database.runtime_password}"
    assert root["secrets"]["secret_values"]["runtime_database_url"] == "${module.database.runtime_database_url}"
    # ...under the names `plant db upgrade` reads.
    monkeypatch.setenv("PLANT_RUNTIME_ROLE", "plant_runtime")
    monkeypatch.setenv("PLANT_RUNTIME_ROLE_PASSWORD", "pw")
    settings = load_settings()
    assert settings.runtime_role == "plant_runtime" and settings.runtime_role_password.get_secret_value() == "pw"


def test_the_runtime_role_is_not_a_cloud_sql_user() -> None:
    """Cloud SQL makes every user it creates a member of cloudsqlsuperuser, with CREATEROLE:
    the migrate job creates the runtime role in SQL (LOGIN only) instead."""
    database = MODULES / "database"
    users = resources(database, "google_sql_user")
    assert list(users) == ["app"] and users["app"]["name"] == "${var.user_name}"
    assert users["app"]["password"] == "${random_password.app.result}"
    for path in tf_files():
        for block in parse(path).get("resource", []):
            for rtype, named in block.items():
                if unquote(rtype) == "google_sql_user":
                    assert path.parent == database and [unquote(n) for n in named] == ["app"], path
                    assert "runtime" not in json.dumps(clean(named)), path
    password = resources(database, "random_password")["runtime"]
    assert password["length"] == 40 and password["special"] is False  # it travels inside a URL
    precondition = one(one(password["lifecycle"])["precondition"])
    assert precondition["condition"] == "${var.runtime_user_name != var.user_name}"
    variable = clean(module_blocks(database)["variable"]["runtime_user_name"])
    assert variable["default"] == "plant_runtime" != clean(module_blocks(database)["variable"]["user_name"])["default"]


def identifier_pattern(variable: dict[str, Any]) -> re.Pattern[str]:
    return re.compile(re.search(r'regex\("([^"]+)"', one(variable["validation"])["condition"])[1])


@pytest.mark.parametrize("name,valid", [
    ("plant_runtime", True), ("_r", True), pytest.param("a" * 63, True, id="63-chars"),
    pytest.param("a" * 64, False, id="64-chars"), ("Plant", False), ("9lives", False), ("plant-runtime", False),
    ("", False), ('x"; DROP', False),
])
def test_runtime_role_names_are_plain_postgresql_identifiers(name: str, valid: bool) -> None:
    """The role name goes unquoted into DATABASE_URL; the migrate job quotes it in SQL."""
    for directory, variable in ((MODULES / "database", "runtime_user_name"), (MODULES / "run", "runtime_role")):
        declared = clean(module_blocks(directory)["variable"][variable])
        condition = one(declared["validation"])["condition"]
        assert f'!startswith(var.{variable}, "pg_")' in condition  # reserved by PostgreSQL
        assert bool(identifier_pattern(declared).fullmatch(name)) == valid, (directory.name, name)


def test_runtime_database_url_uses_the_runtime_role() -> None:
    outputs = clean(module_blocks(MODULES / "database")["output"])
    owner, runtime = outputs["database_url"], outputs["runtime_database_url"]
    assert runtime["sensitive"] is True and outputs["runtime_password"]["sensitive"] is True
    assert re.fullmatch(
        r"postgresql\+psycopg://\$\{var\.runtime_user_name\}:\$\{urlencode\(random_password\.runtime\.result\)\}"
        r"@/\$\{google_sql_database\.plant\.name\}\?host=/cloudsql/"
        r"\$\{google_sql_database_instance\.postgres\.connection_name\}",
        runtime["value"],
    ), runtime["value"]
    # The same socket and database as the owner's URL; only the credentials differ.
    assert runtime["value"].split("@", 1)[1] == owner["value"].split("@", 1)[1]
    assert outputs["runtime_password"]["value"] == "${random_password.runtime.result}"
    assert outputs["runtime_user_name"]["value"] == "${var.runtime_user_name}"


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform CLI not installed")
@pytest.mark.parametrize("name,accepted", [
    ("plant_runtime", True), ("app_9", True), ("pg_runtime", False), ("Plant", False), ("plant-runtime", False),
    pytest.param("a" * 64, False, id="64-chars"),
])
def test_runtime_role_name_is_validated_by_terraform(tmp_path: Path, name: str, accepted: bool) -> None:
    shutil.copy(MODULES / "database" / "variables.tf", tmp_path / "variables.tf")
    given = {"project_id": "p", "region": "r", "instance_name": "i", "tier": "t", "private_network": "n",
             "allocated_ip_range": "a", "runtime_user_name": name}
    if accepted:
        assert terraform_console(tmp_path, "var.runtime_user_name", given) == name
    else:
        with pytest.raises(AssertionError, match="Invalid value for variable"):
            terraform_console(tmp_path, "var.runtime_user_name", given)


def test_services_reaching_redis_use_direct_vpc_egress() -> None:
    for name, (kind, body) in run_resources().items():
        pod = pod_template(kind, body)
        if "REDIS_URL_FILE" not in env_secrets(pod):
            continue
        vpc = one(pod["vpc_access"])
        assert "connector" not in vpc, f"{name}: Direct VPC egress, not a Serverless VPC connector"
        interface = one(vpc["network_interfaces"])
        assert interface == {"network": "${var.network_id}", "subnetwork": "${var.subnet_id}"}, name
        assert vpc["egress"] == "PRIVATE_RANGES_ONLY", name


def test_secret_references_are_granted_and_least_privilege() -> None:
    local = run_locals()
    access = {identity: set(names) for identity, names in local["secret_access"].items()}
    assert set().union(*access.values()) == SECRETS | FILE_SECRETS
    referenced: set[str] = set()
    cloudsql_clients = set(local["cloudsql_clients"])
    for name, (kind, body) in run_resources().items():
        pod = pod_template(kind, body)
        identity = re.fullmatch(r'\$\{google_service_account\.runtime\["([a-z]+)"\]\.email\}',
                                pod["service_account"])[1]
        used = set(env_secrets(pod).values()) | volume_secrets(pod)
        referenced |= used
        assert used == access[identity], f"{name} ({identity}) reads {used}, may read {access[identity]}"
        assert ("DATABASE_URL_FILE" in env_secrets(pod)) == (identity in cloudsql_clients), name
        # A revision must not be created before its identity may read its secrets.
        assert "${google_secret_manager_secret_iam_member.access}" in body["depends_on"], name
    assert referenced == SECRETS | FILE_SECRETS


def test_secrets_module_holds_exactly_the_seven_secrets() -> None:
    local = clean(module_blocks(MODULES / "secrets")["locals"])
    assert set(local["secrets"]) == SECRETS
    root = {n: clean(b) for n, b in module_blocks(ROOT)["module"].items()}
    assert set(root["secrets"]["secret_values"]) == SECRETS
    versions = resources(MODULES / "secrets", "google_secret_manager_secret_version")
    assert versions["this"]["secret_data"] == "${var.secret_values[each.key]}"
    outputs = clean(module_blocks(MODULES / "secrets")["output"])
    assert "retired_signing_keys" in outputs["secret_ids"]["value"]


def test_retired_signing_keys_are_mounted_where_plant_reads_them(monkeypatch) -> None:
    """Every role that verifies signatures finds the retired keys and seals in the directory
    its PLANT_RETIRED_SIGNING_KEYS_DIR names; without them a rotated key's versions would
    fail verification there."""
    local = run_locals()
    mount = local["retired_keys_mount"]
    assert local["retired_keys_volumes"] == "${length(var.retired_signing_key_files) > 0 ? [local.retired_keys_volume] : []}"
    verifiers = set()
    for name, (kind, body) in run_resources().items():
        pod = pod_template(kind, body)
        container = one(pod["containers"])
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        if "PLANT_SIGNING_KEY_FILE" not in env_secrets(pod):
            assert "PLANT_RETIRED_SIGNING_KEYS_DIR" not in env and not volume_secrets(pod), name
            continue
        verifiers.add(name)
        assert env["PLANT_RETIRED_SIGNING_KEYS_DIR"] == "${local.retired_keys_mount}", name
        volume = dynamic_block(pod, "volumes")
        assert volume["for_each"] == "${local.retired_keys_volumes}", name
        content = one(volume["content"])
        assert content["name"] == "${local.retired_keys_volume}", name
        items = dynamic_block(one(content["secret"]), "items")
        assert items["for_each"] == "${var.retired_signing_key_files}", name
        assert one(items["content"]) == {"path": "${items.key}", "version": "${items.value}"}, name
        mounts = dynamic_block(container, "volume_mounts")
        assert mounts["for_each"] == "${local.retired_keys_volumes}", name
        assert one(mounts["content"]) == {"name": "${local.retired_keys_volume}",
                                          "mount_path": "${local.retired_keys_mount}"}, name
    assert verifiers == SIGNATURE_VERIFIERS
    monkeypatch.setenv("PLANT_RETIRED_SIGNING_KEYS_DIR", mount)
    assert load_settings().retired_signing_keys_path == Path(mount)
    # The files come from the secrets module, one version per file, wired through the root.
    versions = resources(MODULES / "secrets", "google_secret_manager_secret_version")["retired_signing_key"]
    assert versions["for_each"] == "${var.retired_signing_key_files}"
    assert versions["secret"] == "${google_secret_manager_secret.retired_signing_keys.id}"
    root = {n: clean(b) for n, b in module_blocks(ROOT)["module"].items()}
    assert root["secrets"]["retired_signing_key_files"] == "${local.retired_signing_key_files}"
    assert root["run"]["retired_signing_key_files"] == "${module.secrets.retired_signing_key_files}"


def test_signing_key_generations_keep_every_key_and_never_destroy_one() -> None:
    keys = resources(ROOT, "tls_private_key")["signing"]
    assert keys["for_each"] == "${toset(local.signing_generations)}"
    assert one(keys["lifecycle"])["prevent_destroy"] is True  # a destroyed key unverifies what it signed
    local = clean(module_blocks(ROOT)["locals"])
    assert "key.public_key_pem" in local["retired_signing_key_files"]
    assert "private_key_pem" not in local["retired_signing_key_files"]
    root = {n: clean(b) for n, b in module_blocks(ROOT)["module"].items()}
    assert root["secrets"]["secret_values"]["signing_key"] == (
        "${tls_private_key.signing[local.active_signing_generation].private_key_pem_pkcs8}")
    # The key of configurations before generations existed stays (no destroy and re-create).
    moved = [clean(m) for m in parse(ROOT / "main.tf").get("moved", [])]
    assert {"from": "${tls_private_key.signing}", "to": '${tls_private_key.signing["1"]}'} in moved
    generation = clean(module_blocks(ROOT)["variable"]["signing_key_generation"])
    assert generation["default"] == 1
    # A version Terraform replaces stays readable for the revisions that pinned it.
    for name, version in resources(MODULES / "secrets", "google_secret_manager_secret_version").items():
        assert version["deletion_policy"] == "ABANDON", name


def test_env_names_match_what_plant_reads() -> None:
    _, api = run_resources()["api"]
    container = one(pod_template("google_cloud_run_v2_service", api)["containers"])
    assert env_secrets(pod_template("google_cloud_run_v2_service", api)) == {
        "DATABASE_URL_FILE": "runtime_database_url",
        "REDIS_URL_FILE": "redis_url",
        "PLANT_SIGNING_KEY_FILE": "signing_key",
    }
    assert one(container["startup_probe"])["http_get"][0]["path"] == "/health"
    _, job = run_resources()["migrate"]
    assert env_secrets(pod_template("google_cloud_run_v2_job", job)) == {
        "DATABASE_URL_FILE": "database_url", "PLANT_ADMIN_API_KEY_FILE": "bootstrap_admin_key",
        "PLANT_RUNTIME_ROLE_PASSWORD_FILE": "runtime_role_password"}


def test_exactly_one_beat() -> None:
    beats = [(name, kind, body) for name, (kind, body) in run_resources().items()
             if one(pod_template(kind, body)["containers"])["args"] == ["beat"]]
    assert len(beats) == 1
    name, kind, body = beats[0]
    assert kind == "google_cloud_run_v2_worker_pool"
    assert "count" not in body and "for_each" not in body
    scaling = one(body["scaling"])
    assert scaling["manual_instance_count"] == 1 and scaling["scaling_mode"] == "MANUAL"
    # Its recovery goes to a queue only workers of the same release consume: they roll out first.
    assert "${google_cloud_run_v2_worker_pool.worker}" in body["depends_on"]


def test_queues_per_worker_pool() -> None:
    entrypoint = (REPO / "docker" / "entrypoint.sh").read_text()
    assert re.search(r"\n    worker\)\n(?:.*\n){0,3}.*worker -Q default,maintenance ", entrypoint)
    assert re.search(r"\n    worker-audit\)\n(?:.*\n){0,4}.*worker -Q audit ", entrypoint)


def test_no_public_invoker_unless_asked() -> None:
    for path in tf_files():
        for block in parse(path).get("resource", []):
            for named in block.values():
                for name, body in named.items():
                    body = clean(body)
                    if body.get("member") in ("allUsers", "allAuthenticatedUsers"):
                        assert body.get("count") == "${var.allow_unauthenticated_api ? 1 : 0}", name
    for directory in (ROOT, MODULES / "run"):
        variable = clean(module_blocks(directory)["variable"]["allow_unauthenticated_api"])
        assert variable["default"] is False


def test_each_role_has_its_own_service_account() -> None:
    local = run_locals()
    assert "api" in local["identities"] and "migrate" in local["identities"]
    accounts = set()
    for kind, body in run_resources().values():
        accounts.add(pod_template(kind, body)["service_account"])
    # worker and worker-audit share one identity; every other role has its own.
    assert len(accounts) == len(run_resources()) - 1


# --- Database, cache, secrets content ---------------------------------------------------------


def test_cloud_sql_is_private_with_backups_and_pitr() -> None:
    instance = resources(MODULES / "database", "google_sql_database_instance")["postgres"]
    settings = one(instance["settings"])
    ip = one(settings["ip_configuration"])
    assert ip["ipv4_enabled"] is False
    assert ip["private_network"] == "${var.private_network}"
    assert "authorized_networks" not in ip
    backups = one(settings["backup_configuration"])
    assert backups["enabled"] is True and backups["point_in_time_recovery_enabled"] is True
    # The logging baseline is written out (scanners read it), each value overridable...
    flags = {f["name"]: f["value"] for f in settings["database_flags"]}
    for name in ("log_connections", "log_disconnections", "log_checkpoints", "log_lock_waits"):
        assert flags[name] == f'${{lookup(var.database_flags, "{name}", "on")}}', name
    baseline = set(clean(module_blocks(MODULES / "database")["locals"])["baseline_flags"])
    assert baseline == set(flags)
    # ...and every other flag comes from the variable.
    extra = clean(module_blocks(MODULES / "database")["resource"][
        ("google_sql_database_instance", "postgres")])["settings"][0]["dynamic"][0]["database_flags"]
    assert extra["for_each"] == "${local.extra_flags}"
    version = clean(module_blocks(MODULES / "database")["variable"]["database_version"])
    assert version["default"] in ("POSTGRES_16", "POSTGRES_17")
    assert "POSTGRES_16" in version["validation"][0]["condition"]
    for name in ("dev.tfvars", "prod.tfvars"):
        assert tfvars(name)["database_version"] in ("POSTGRES_16", "POSTGRES_17")


def test_redis_is_private_with_auth_and_keeps_queued_tasks() -> None:
    redis = resources(MODULES / "cache", "google_redis_instance")["broker"]
    assert redis["connect_mode"] == "PRIVATE_SERVICE_ACCESS"
    assert redis["auth_enabled"] is True
    assert redis["redis_configs"] == {"maxmemory-policy": "noeviction"}
    assert re.match(r"redis://:\$\{urlencode\(google_redis_instance\.broker\.auth_string\)\}@",
                    clean(module_blocks(MODULES / "cache")["output"]["redis_url"])["value"])


def test_private_service_access_is_wired() -> None:
    network = MODULES / "network"
    connection = resources(network, "google_service_networking_connection")["private_service_access"]
    assert connection["service"] == "servicenetworking.googleapis.com"
    address = resources(network, "google_compute_global_address")["private_service_access"]
    assert address["purpose"] == "VPC_PEERING"
    # Consumers of the network id wait for the peering.
    output = clean(module_blocks(network)["output"]["network_id"])
    assert output["depends_on"] == ["${google_service_networking_connection.private_service_access}"]


SECRETISH = re.compile(r"password|secret|token|private|signing|credential|auth|_key$|^key", re.I)


@pytest.mark.parametrize("name", ["dev.tfvars", "prod.tfvars"])
def test_no_plaintext_secrets_in_tfvars(name: str) -> None:
    values = tfvars(name)
    assert not [k for k in values if SECRETISH.search(k)]
    for value in strings_in(values):
        assert "BEGIN" not in value and not re.search(r"://[^/\s]*:[^@/\s]+@", value), value
        assert not re.fullmatch(r"[A-Za-z0-9+/=_-]{32,}", value), f"looks like a credential: {value}"


def test_checkov_skips_are_justified() -> None:
    for path in tf_files():
        for match in re.finditer(r"checkov:skip=([A-Z0-9_]+)(?::(.*))?", path.read_text()):
            assert match[2] and len(match[2].strip()) >= 30, f"{path}: {match[1]} needs a reason"


def terraform_console(directory: Path, expression: str, variables: dict[str, Any]) -> Any:
    """Evaluate ``expression`` with ``terraform console`` in ``directory``, a configuration
    without providers (no init, no network). ``variables`` go in as a JSON var file, so they
    keep their types; any ``*.tfvars`` there is read too. Raises on an error."""
    (directory / "given.tfvars.json").write_text(json.dumps(variables))
    var_files = [f"-var-file={p.name}" for p in sorted(directory.glob("*.tfvars"))]
    result = subprocess.run(["terraform", "console", "-no-color", *var_files, "-var-file=given.tfvars.json"],
                            input=f"jsonencode({expression})\n", cwd=directory, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "TF_CLI_CONFIG_FILE": os.devnull})
    if result.returncode != 0 or "Error:" in result.stderr:
        raise AssertionError(result.stderr)
    return json.loads(json.loads(result.stdout))


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform CLI not installed")
def test_rotation_ships_every_older_key_and_each_seal(tmp_path: Path) -> None:
    """The root's own variables and expressions, evaluated by Terraform with stand-in keys:
    generation N signs, generations 1..N-1 become retired public keys, N+1 an upcoming one
    (trusted before it signs), and each seal becomes its <kid>.seal.json."""
    shutil.copy(ROOT / "variables.tf", tmp_path / "variables.tf")
    shutil.copy(ROOT / "dev.tfvars", tmp_path / "dev.tfvars")
    local = clean(module_blocks(ROOT)["locals"])
    stand_in = "local.stand_in_keys"
    lines = ["locals {", '  stand_in_keys = { for g in local.signing_generations : g => '
             '{ public_key_pem = "public-${g}", private_key_pem_pkcs8 = "private-${g}" } }']
    for name in ("signing_generations", "active_signing_generation", "retired_signing_key_files"):
        expression = local[name].removeprefix("${").removesuffix("}")
        lines.append(f"  {name} = {expression.replace('tls_private_key.signing', stand_in)}")
    (tmp_path / "main.tf").write_text("\n".join([*lines, "}"]) + "\n")
    signing_key = clean(module_blocks(ROOT)["module"]["secrets"])["secret_values"]["signing_key"]
    active = signing_key.removeprefix("${").removesuffix("}").replace("tls_private_key.signing", stand_in)

    # Generation 1 signs; generation 2 is trusted already, as an upcoming key.
    assert terraform_console(tmp_path, "local.retired_signing_key_files", {}) == {"generation-2.next.pem": "public-2"}
    assert terraform_console(tmp_path, active, {}) == "private-1"
    third = {"signing_key_generation": 3, "signing_key_seals": {"kid-of-1": '{"kid": "kid-of-1"}'}}
    assert terraform_console(tmp_path, "local.retired_signing_key_files", third) == {
        "generation-1.pem": "public-1", "generation-2.pem": "public-2", "generation-4.next.pem": "public-4",
        "kid-of-1.seal.json": '{"kid": "kid-of-1"}'}
    assert terraform_console(tmp_path, active, third) == "private-3"
    for wrong in ({"signing_key_generation": 0}, {"signing_key_generation": 1.5},
                  {"signing_key_seals": {"../x": "{}"}}, {"signing_key_seals": {"kid-of-1": "not json"}},
                  {"signing_key_seals": {"kid-of-1": '{"kid": "kid-of-2"}'}}):
        with pytest.raises(AssertionError, match="Invalid value for variable"):
            terraform_console(tmp_path, "local.retired_signing_key_files", wrong)


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform CLI not installed")
@pytest.mark.parametrize("files,accepted", [
    ({"generation-1.pem": "-----BEGIN PUBLIC KEY-----", "generation-3.next.pem": "-----BEGIN PUBLIC KEY-----",
      "AbC_-9.seal.json": '{"kid": "AbC_-9", "digest_id": 1}'}, True),
    ({"generation-1.pem": "-----BEGIN PRIVATE KEY-----"}, False),  # a private key never ships
    ({"AbC_-9.seal.json": '{"kid": "other"}'}, False),  # the services would refuse to start
    ({"AbC_-9.seal.json": "{not json"}, False),
    ({"../escape.pem": "x"}, False),
    ({".hidden.pem": "x"}, False),
    ({"notes.txt": "x"}, False),
])
def test_retired_key_file_names_and_contents_are_validated(tmp_path: Path, files: dict, accepted: bool) -> None:
    shutil.copy(MODULES / "secrets" / "variables.tf", tmp_path / "variables.tf")
    given = {"project_id": "p", "name_prefix": "plant-dev", "retired_signing_key_files": files,
             "secret_values": {name: "x" for name in SECRETS}}
    if accepted:
        assert terraform_console(tmp_path, "var.retired_signing_key_files", given) == files
    else:
        with pytest.raises(AssertionError, match="Invalid value for variable"):
            terraform_console(tmp_path, "var.retired_signing_key_files", given)


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform CLI not installed")
def test_terraform_fmt_is_clean() -> None:
    result = subprocess.run(["terraform", "fmt", "-check", "-recursive", "-list=true", str(TF)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_first_deploy_runs_the_migrations_before_any_service_starts() -> None:
    """docs/deploy.md's first apply with an image created the API, workers and beat together with
    the migrate job, and ran the job only after: every service started on an empty database
    (helper-73). The migrate job is applied alone (-target), run, and only then the rest."""
    text = (REPO / "docs" / "deploy.md").read_text()
    section = text[text.index("### From nothing to running"):text.index("### Rolling out a new version")]
    applies = [m for m in re.finditer(r"terraform apply[^\n]*-var image_tag[^\n]*", section)]
    migrate = section.index("gcloud run jobs execute")
    assert "-target='module.run[0].google_cloud_run_v2_job.migrate'" in applies[0][0] and applies[0].start() < migrate
    assert all("-target" not in m[0] for m in applies[1:]) and applies[1].start() > migrate
    assert "migrate" in resources(MODULES / "run", "google_cloud_run_v2_job")


@pytest.mark.parametrize("name", ["dev.tfvars", "prod.tfvars"])
def test_each_example_environment_fits_its_connection_budget(name: str) -> None:
    """docs/deploy.md ("Scaling"): API instances x processes x (pool x 2 + 2), plus the workers,
    under max_connections. prod.tfvars asked 360 + 35 of 200 (helper-73)."""
    values = tfvars(name)
    threads = int(re.search(r'PLANT_WEB_THREADS", (\d+)\)', (REPO / "gunicorn.conf.py").read_text())[1])  # the pool follows
    api = values["api_max_instances"] * values["api_web_concurrency"] * (threads * 2 + 2)
    from models.settings import Settings

    # tasks/runtime.py: a pool of 2, overflowing by PLANT_DB_POOL_SIZE (its default: Terraform sets none)
    worker_pool = 2 + Settings.model_fields["db_pool_size"].default
    workers = (values["worker_instances"] * values["worker_concurrency"] + values["worker_audit_instances"]) * worker_pool
    assert api + workers < int(values["database_flags"]["max_connections"]), (api, workers)
