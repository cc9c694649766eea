"""Cloud Run gets every secret as a file, never in its environment, and each role starts from
what Terraform gives it.

terraform/modules/run mounts each secret a role reads as a Cloud Run secret volume and passes
the setting's ``*_FILE`` variable (models/settings.py ``SecretFileVariables``) instead of the
value (``value_source.secret_key_ref``): an environment is inherited by every child process,
readable in /proc/<pid>/environ and dumped by crash reporters. The tests here take each Cloud
Run container's environment and mounts from the HCL, put stand-in secrets in files where the
mounts would be, and run docker/entrypoint.sh with that environment (its programs replaced by
stubs that record what they were given) and ``load_settings()``: each role must start, read every
secret from its file, and hand none of them on in an environment. PLANT_EMBEDDER is the same
variable for every process that embeds, the migrate job included.
"""

from __future__ import annotations

import os
import re
import stat
import runpy
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest

from models.key_material import generate_ed25519
from models.keys import keyring_from_settings
from models.settings import FILE_SUFFIX, SECRET_FILE_SETTINGS, Settings, field_variables, load_settings
from tests.test_deploy_terraform import (MODULES, ROOT, clean, env_secrets, module_blocks, one, pod_template,
                                         run_resources, tf_files)

REPO = Path(__file__).resolve().parent.parent
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
FLOWER_CONF = REPO / "docker" / "flower_conf.py"

# Stand-ins for each secret's value, each with a marker no environment may show.
SIGNING_KEY = generate_ed25519().private_pem().decode()
SECRET_VALUES = {
    "database_url": "postgresql://plant:owner-pw-m4rk1@/plant?host=/cloudsql/p:r:i",
    "runtime_database_url": "postgresql://plant_runtime:runtime-pw-m4rk2@/plant?host=/cloudsql/p:r:i",
    "redis_url": "redis://:redis-auth-m4rk3@10.0.0.3:6379/0",
    "runtime_role_password": "role-pw-m4rk4",
    "bootstrap_admin_key": "plant_admin-m4rk5",
    "flower_basic_auth": "admin:flower-pw-m4rk6",
    "signing_key": SIGNING_KEY,
}
MARKERS = [*(re.search(r"m4rk\d", v)[0] for k, v in SECRET_VALUES.items() if k != "signing_key"),
           SIGNING_KEY.splitlines()[1]]
# The expressions the run module gives plain variables, as an example environment sets them.
EXPRESSIONS = {"${var.embedder}": "hashing", "${var.runtime_role}": "plant_runtime",
               "${tostring(var.api_web_concurrency)}": "2", "${tostring(var.worker_concurrency)}": "2"}
EMBEDDING_ROLES = {"api", "worker", "worker-audit", "migrate"}
STUB = """#!/bin/sh
# Stands in for the program the entrypoint starts: records its arguments and environment.
{ printf '%s\\n' "${0##*/} $*"; env; } > "$STUB_OUT"
if [ "${0##*/}" = plant ] && [ -n "${PLANT_SIGNING_KEY_FILE:-}" ]; then
    cp "$PLANT_SIGNING_KEY_FILE" "$STUB_OUT.key"
    stat -c '%a %u' "$PLANT_SIGNING_KEY_FILE" > "$STUB_OUT.key-mode"
    printf '%s\\n' "$PLANT_SIGNING_KEY_FILE" > "$STUB_OUT.key-path"
fi
"""


def containers() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """role (the container's first argument) => (pod template, container)."""
    found = {}
    for kind, body in run_resources().values():
        pod = pod_template(kind, body)
        found[one(pod["containers"])["args"][0]] = (pod, one(pod["containers"]))
    return found


def role_environment(role: str, tmp_path: Path) -> dict[str, str]:
    """The variables Terraform sets in ``role``'s container, with each secret file written under
    ``tmp_path`` where its volume would be mounted and the paths moved there."""
    pod, container = containers()[role]
    for variable, secret in env_secrets(pod).items():
        path = tmp_path / next(e["value"] for e in container["env"] if e["name"] == variable).lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(SECRET_VALUES[secret] + "\n")  # as Secret Manager holds a value saved with one
        path.chmod(0o600)  # ours here; on Cloud Run root's, 0444 (read_private_key_file takes both)
    retired = tmp_path / "retired"
    retired.mkdir(exist_ok=True)
    environment = {}
    for env in container["env"]:
        value = env["value"]
        if value.startswith("/secrets/"):
            value = str(tmp_path) + value
        elif value == "${local.retired_keys_mount}":
            value = str(retired)
        elif "${" in value:
            assert value in EXPRESSIONS, f"{role}: {env['name']} = {value}: teach EXPRESSIONS its example value"
            value = EXPRESSIONS[value]
        environment[env["name"]] = value
    return environment


def run_entrypoint(tmp_path: Path, role: str, environment: dict[str, str]) -> tuple[subprocess.CompletedProcess, str]:
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for program in ("gunicorn", "celery", "plant"):
        (stubs / program).write_text(STUB)
        (stubs / program).chmod(0o755)
    out = tmp_path / "started"
    base = {"PATH": f"{stubs}:{os.environ['PATH']}", "PLANT_ROLE_FILE": str(tmp_path / "role"),
            "PLANT_DATA_DIR": str(tmp_path / "data"), "STUB_OUT": str(out)}
    result = subprocess.run(["sh", str(ENTRYPOINT), role], env={**base, **environment},
                            capture_output=True, text=True, timeout=30)
    return result, out.read_text() if out.exists() else ""


@pytest.fixture
def plant_environment(monkeypatch: pytest.MonkeyPatch):
    """Set exactly these variables for load_settings(), none of the test process's own."""
    def apply(environment: dict[str, str]) -> None:
        for name in list(os.environ):
            if name.upper().startswith(("PLANT_", "DATABASE_URL", "REDIS_URL", "FLOWER_")):
                monkeypatch.delenv(name)
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
    return apply


def test_no_secret_reaches_a_container_through_its_environment() -> None:
    for path in tf_files():
        assert "secret_key_ref" not in path.read_text(), path
    readable = {variable + FILE_SUFFIX for name in SECRET_FILE_SETTINGS for _, variable in field_variables(Settings, name)}
    readable.add("PLANT_SIGNING_KEY_FILE")  # a setting of its own (models/keys.py)
    for role, (pod, container) in containers().items():
        files = env_secrets(pod)  # every *_FILE names a mounted secret file (asserted there)
        assert set(files) <= readable, f"{role}: Plant reads none of {set(files) - readable}"
        # Every secret volume is there for a *_FILE variable: none is mounted unread, and no role
        # is given a secret twice.
        volumes = [v for v in pod.get("volumes", []) if "secret" in v]
        assert len(volumes) == len(files) == len(set(files.values())), role
        assert all(m["mount_path"].startswith("/secrets/") for m in container["volume_mounts"]
                   if m["name"] in {v["name"] for v in volumes}), role


def test_signing_key_files_are_root_s_where_the_key_is_read() -> None:
    """On the first-generation execution environment a single container's secret files are its
    own user's, 0444: Plant refuses such a private key. The API and the seal-keys job pin the
    second generation (root's files); worker pools have no other."""
    for name, (kind, body) in run_resources().items():
        pod = pod_template(kind, body)
        if "PLANT_SIGNING_KEY_FILE" in env_secrets(pod) and kind != "google_cloud_run_v2_worker_pool":
            assert pod.get("execution_environment") == "EXECUTION_ENVIRONMENT_GEN2", name


@pytest.mark.parametrize("role", ["api", "worker", "worker-audit", "beat", "flower", "migrate", "seal-keys"])
def test_each_role_starts_from_its_terraform_environment_and_reads_its_secrets(
        tmp_path: Path, role: str, plant_environment) -> None:
    environment = role_environment(role, tmp_path)
    result, started = run_entrypoint(tmp_path, role, environment)
    assert result.returncode == 0, result.stderr
    assert started, f"{role}: the entrypoint started nothing"
    for marker in MARKERS:
        assert marker not in started, f"{role}: a secret is in the environment of what the entrypoint started"
    plant_environment(environment)
    settings = load_settings()
    secrets = env_secrets(containers()[role][0])
    read = {"DATABASE_URL_FILE": lambda: settings.database_url.replace("+psycopg", ""),
            "REDIS_URL_FILE": lambda: settings.redis_url,
            "PLANT_RUNTIME_ROLE_PASSWORD_FILE": lambda: settings.runtime_role_password.get_secret_value(),
            "PLANT_ADMIN_API_KEY_FILE": lambda: settings.admin_api_key.get_secret_value(),
            "PLANT_FLOWER_BASIC_AUTH_FILE": lambda: settings.flower_basic_auth.get_secret_value(),
            "PLANT_SIGNING_KEY_FILE": lambda: keyring_from_settings(settings).active.private_pem().decode()}
    for variable, secret in secrets.items():
        assert read[variable]().strip() == SECRET_VALUES[secret].strip(), (role, variable)
    if role == "flower":
        # Flower gets its password from the configuration file the entrypoint names, which reads it.
        assert "--conf=/app/flower_conf.py" in started.splitlines()[0]
        assert runpy.run_path(str(FLOWER_CONF))["basic_auth"] == [SECRET_VALUES["flower_basic_auth"]]
    if role in EMBEDDING_ROLES:
        assert environment["PLANT_EMBEDDER"] == settings.embedder == "hashing"


def test_seal_keys_copies_the_key_file_privately_and_removes_it(tmp_path: Path) -> None:
    """The seal takes a lock beside the active key, so the entrypoint works on a copy: once
    read into PLANT_SIGNING_KEY, which `plant` and its children inherited."""
    result, started = run_entrypoint(tmp_path, "seal-keys", role_environment("seal-keys", tmp_path))
    assert result.returncode == 0, result.stderr
    assert not re.search(r"^PLANT_SIGNING_KEY=", started, re.M)
    assert (tmp_path / "started.key").read_text() == SIGNING_KEY + "\n"
    mode, owner = (tmp_path / "started.key-mode").read_text().split()
    assert stat.S_IMODE(int(mode, 8)) == 0o600 and int(owner) == os.geteuid()
    assert not Path((tmp_path / "started.key-path").read_text().strip()).exists()  # the work directory is gone


def test_one_embedder_for_every_process_that_embeds() -> None:
    """The migrate job fills in reading vectors with its PLANT_EMBEDDER: unset there while the
    workers set another, it would write vectors the audit then reports as embedding-mismatch."""
    for role, (_, container) in containers().items():
        env = {e["name"]: e["value"] for e in container["env"]}
        if role in EMBEDDING_ROLES:
            assert env.get("PLANT_EMBEDDER") == "${var.embedder}", role
        else:
            assert "PLANT_EMBEDDER" not in env, role
    code_default = Settings.model_fields["embedder"].default
    allowed = set(Settings.model_fields["embedder"].annotation.__args__)
    for directory in (MODULES / "run", ROOT):
        variable = clean(module_blocks(directory)["variable"]["embedder"])
        assert variable["default"] == code_default, directory
        names = set(re.findall(r'"([a-z-]+)"', one(variable["validation"])["condition"]))
        assert names == allowed, directory
    root = {n: clean(b) for n, b in module_blocks(ROOT)["module"].items()}
    assert root["run"]["embedder"] == "${var.embedder}"
    for tfvars in ROOT.glob("*.tfvars"):
        assert hcl2.loads(tfvars.read_text()).get("embedder", code_default) in allowed, tfvars
