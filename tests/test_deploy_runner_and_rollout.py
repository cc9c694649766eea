"""Review of the deployment and the dev runner: what the compose stack, the image, Terraform
and ``plant dev`` promise, checked on the real processes and the real files."""

import os
import re
import secrets
import shutil
import subprocess
import threading
import uuid
from pathlib import Path

import psycopg
import psycopg.sql
import pytest
from pydantic import SecretStr
from sqlalchemy.orm import Session

from cli.bootstrap import ensure_configured_admin
from cli.demo_stack import prepare_data_dir
from cli.dev import make_data_dir
from cli.errors import PlantCliError
from cli.postgres_server import EmbeddedPostgres
from cli.services import start_on_a_free_port
from models.api_keys import Caller, authenticate
from models.migrate import MIGRATION_LOCK_ID, grant_runtime_role, upgrade_head
from models.settings import libpq_url
from tests.conftest import REPO_ROOT, wait_for
from tests.test_deploy_compose import compose, env_example, interpolate
from tests.test_deploy_terraform import MODULES, clean, one, resources, terraform_console


def test_two_upgraders_granting_a_new_runtime_role_at_once_both_succeed(make_database) -> None:
    """The migrate job may run twice at once (two deploys, a retried execution beside a new one):
    the migrations wait for each other on an advisory lock, and the runtime role's grant must too.
    Here the other upgrader holds that lock and has created the role, uncommitted, when ours
    looks for it: ours failed with a unique violation on pg_authid once the other committed."""
    url = make_database("review_deploy_grant_race")
    upgrade_head(url)
    role = f"review_rt_{uuid.uuid4().hex[:8]}"
    outcome: list[object] = []
    try:
        with psycopg.connect(libpq_url(url)) as other:
            other.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
            other.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN").format(psycopg.sql.Identifier(role)))

            def ours() -> None:
                try:
                    outcome.append(grant_runtime_role(url, role, password="a-password-of-its-own"))
                except Exception as error:  # noqa: BLE001 - the test reports it
                    outcome.append(error)

            thread = threading.Thread(target=ours)
            thread.start()

            def ours_waits() -> bool:
                with psycopg.connect(libpq_url(url), autocommit=True) as probe:
                    return probe.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                         " AND wait_event_type = 'Lock'").fetchone()[0] == 1

            wait_for(ours_waits, what="our grant to wait for the other upgrader")
        thread.join(timeout=30)  # the other committed on leaving the block
        assert not thread.is_alive()
        assert len(outcome) == 1 and not isinstance(outcome[0], Exception), outcome
        assert outcome[0].role == role
    finally:
        with psycopg.connect(libpq_url(url), autocommit=True) as admin:
            if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                admin.execute(psycopg.sql.SQL("DROP OWNED BY {}").format(psycopg.sql.Identifier(role)))
                admin.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(role)))


def test_publishing_the_api_wider_leaves_flower_on_loopback() -> None:
    """docs/deploy.md: to expose the API, set PLANT_PUBLISH_ADDRESS (behind a TLS proxy); "Flower
    should stay on loopback". Flower was published on the same variable, so following that step
    put Flower, plain HTTP with /metrics open, on every interface."""
    env = {**env_example(), "PLANT_PUBLISH_ADDRESS": "0.0.0.0"}
    published = interpolate(compose(), env)["services"]
    assert published["api"]["ports"] == ["0.0.0.0:8000:8000"]
    assert all(port.startswith("127.0.0.1:") for port in published["flower"]["ports"])


def _variables_read_at_the_process_edge() -> set[str]:
    """What the image's entrypoint, gunicorn.conf.py and the CLI read of the environment
    themselves, outside models.settings."""
    entrypoint = (REPO_ROOT / "docker" / "entrypoint.sh").read_text()
    names = set(re.findall(r"\$\{?(PLANT_[A-Z_]+)", entrypoint))
    for path in [REPO_ROOT / "gunicorn.conf.py", *(REPO_ROOT / "cli").glob("*.py")]:
        source = path.read_text()
        names |= set(re.findall(r"os\.environ(?:\.get\(|\[)[\"']([A-Z_]+)[\"']", source))
        names |= set(re.findall(r"envvar=[\"']([A-Z_]+)[\"']", source))
    return names


def test_every_variable_read_outside_the_settings_is_in_the_readme() -> None:
    """README, "Configuration": one settings object reads the environment, and it lists the
    exceptions. The image's entrypoint and `plant demo` read variables of their own that no
    document named (how many Celery processes a worker runs, when beat counts as unhealthy, the
    demo's ports)."""
    readme = (REPO_ROOT / "README.md").read_text()
    assert sorted(name for name in _variables_read_at_the_process_edge() if f"`{name}`" not in readme) == []


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform CLI not installed")
@pytest.mark.parametrize("processes", [1, 2, 4])
def test_cloud_run_sends_an_api_instance_as_many_requests_as_it_has_threads(tmp_path: Path, processes: int) -> None:
    """The run module's request concurrency was a fixed 16 that the root never set, "at most
    WEB_CONCURRENCY * 8 threads" by its own description: with api_web_concurrency = 1 Cloud Run
    sent 16 requests to 8 threads (half waited in gunicorn's backlog while the autoscaler saw
    room), with 4 it left 16 threads idle."""
    run = MODULES / "run"
    shutil.copy(run / "variables.tf", tmp_path / "variables.tf")
    api = clean(resources(run, "google_cloud_run_v2_service")["api"])
    expression = one(api["template"])["max_instance_request_concurrency"]
    expression = expression.removeprefix("${").removesuffix("}") if isinstance(expression, str) else str(expression)
    given = {"project_id": "p", "region": "r", "name_prefix": "plant-dev", "image": "i", "network_id": "n",
             "subnet_id": "s", "cloudsql_connection_name": "c", "runtime_role": "plant_runtime",
             "secret_ids": {}, "secret_versions": {}, "api_web_concurrency": processes}
    threads = int(re.search(r'PLANT_WEB_THREADS", (\d+)\)', (REPO_ROOT / "gunicorn.conf.py").read_text())[1])
    assert terraform_console(tmp_path, expression, given) == processes * threads


def test_the_documented_deployer_roles_may_grant_who_invokes_the_services() -> None:
    """docs/deploy.md lists "Editor + Project IAM Admin + Secret Manager Admin + Service Networking
    Admin" as enough to deploy. The run module grants run.invoker on the API and Flower services
    (api_invokers, flower_invokers, allow_unauthenticated_api): setting a Cloud Run service's IAM
    policy is Owner's or Cloud Run Admin's (run.services.setIamPolicy), never Editor's, so the
    apply failed with 403 for such a deployer as soon as an invoker was listed."""
    assert resources(MODULES / "run", "google_cloud_run_v2_service_iam_member")
    text = (REPO_ROOT / "docs" / "deploy.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| deployer permissions |"))
    assert "Owner" in row and "Cloud Run Admin" in row.split("Owner, or", 1)[1], row


def test_a_rotated_bootstrap_admin_key_stops_working_once_the_new_one_is_ensured(settings, engine, clean_db) -> None:
    """docs/deploy.md, "Rotating a generated secret": `-replace=random_password.bootstrap_admin_key`.
    The migrate job then ensures the new key, and the one replaced (leaked, say) stays a live
    admin key: rotating it took nothing away."""
    old, new = (f"plant_{secrets.token_urlsafe(32)}" for _ in range(2))
    for key in (old, new):  # each deploy's migrate job: `plant db upgrade` with PLANT_ADMIN_API_KEY
        assert ensure_configured_admin(settings.model_copy(update={"admin_api_key": SecretStr(key)})) == "created"
    with Session(engine) as session:
        assert isinstance(authenticate(session, new), Caller)
        assert authenticate(session, old) is None


def test_the_rotation_steps_say_the_replaced_bootstrap_key_must_be_revoked() -> None:
    """What the test above shows, told to the operator who rotates the key because it leaked."""
    text = (REPO_ROOT / "docs" / "deploy.md").read_text()
    bullet = text[text.index("- Rotating a generated secret"):]
    bullet = bullet[:bullet.index("\n- ")]
    assert "random_password.bootstrap_admin_key" in bullet
    assert "plant api-keys revoke" in bullet and "migrate job" in bullet


def _stub(directory: Path, name: str, script: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


@pytest.mark.parametrize("role,prefix", [("worker", "default"), ("worker-audit", "audit")])
def test_worker_instances_on_cloud_run_each_get_a_node_name_of_their_own(tmp_path: Path, role: str, prefix: str) -> None:
    """Cloud Run gives every instance the hostname ``localhost``, and the entrypoint named each
    worker ``default@%h``: prod's two default-queue instances were one node, ``default@localhost``,
    to Celery's broadcasts, to /health's worker count (a lost instance went unseen) and to Flower.
    Here ``hostname`` says localhost, as there, and ``celery`` prints what it was asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "hostname", "echo localhost")
    _stub(bin_dir, "celery", 'echo "$@"')
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PLANT_DATA_DIR": str(tmp_path / "data"),
           "DATABASE_URL": "postgresql://x@/db", "REDIS_URL": "redis://r"}
    entrypoint = str(REPO_ROOT / "docker" / "entrypoint.sh")

    def run(instance: str, *args: str) -> str:
        result = subprocess.run(["sh", entrypoint, *args], env={**env, "PLANT_ROLE_FILE": str(tmp_path / instance)},
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return result.stdout

    nodes = []
    for instance in ("one", "two"):
        argv = run(instance, role).split()
        node = argv[argv.index("-n") + 1].replace("%h", "localhost")  # celery expands %h to the hostname
        nodes.append(node)
        assert node.startswith(f"{prefix}@")
        # The container's health check pings that very node.
        ping = run(instance, "healthcheck").split()
        assert ping[ping.index("-d") + 1] == node
    assert nodes[0] != nodes[1]


def test_a_second_demo_refuses_to_wipe_the_data_dir_of_one_still_running(server_tmp: Path) -> None:
    """Each `make demo` wipes its data dir (`.plant-demo`) before it starts, and only then checked
    its ports: a second demo started while the first ran deleted the running stack's PostgreSQL
    data, keys and log from under it, then stopped on the port in use (or, on other ports, started
    a second PostgreSQL on the same, re-created, directory)."""
    data_dir = server_tmp / "demo"
    prepare_data_dir(data_dir)
    postgres = start_on_a_free_port(lambda port: EmbeddedPostgres(data_dir / "postgres", port))  # the running demo's
    try:
        with pytest.raises(PlantCliError, match="running"):
            prepare_data_dir(data_dir)
        assert (data_dir / "postgres" / "PG_VERSION").is_file()
        with psycopg.connect(libpq_url(postgres.url), connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        postgres.stop()
    prepare_data_dir(data_dir)  # once it has stopped, the next demo starts afresh
    assert not (data_dir / "postgres").exists()


def _ignored_by_git(path: Path) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO_ROOT).returncode == 0


@pytest.mark.parametrize("path", [
    "terraform/environment/.terraform/terraform.tfstate",  # terraform init: the backend's settings
    "terraform/environment/terraform.tfstate",  # a local state (state pull, -backend=false)
    "terraform/environment/terraform.tfstate.backup",
    "terraform/environment/prod.tfplan",  # a saved plan holds the sensitive values in clear
    ".env.prod",  # .dockerignore keeps .env.* out of the image; git took it
])
def test_git_ignores_what_holds_the_deployment_s_secrets(path: str) -> None:
    """The state holds every generated secret (terraform/README.md: "keep it private"), yet
    nothing kept a local state, a saved plan or .terraform/ out of a `git add -A`."""
    assert _ignored_by_git(REPO_ROOT / path)
    assert not _ignored_by_git(REPO_ROOT / ".env.example")


def test_a_dev_data_dir_of_another_name_is_ignored_by_git() -> None:
    """README: two runners side by side need two data dirs; only `.plant/` was ignored, so a
    second one in the checkout (`.plant-2`) offered its signing key, passwords and admin key to
    `git add`. The runner makes its data dir ignore itself."""
    data_dir = REPO_ROOT / f".plant-review-{uuid.uuid4().hex[:8]}"
    try:
        make_data_dir(data_dir)
        for name in ("keys/active.pem", "postgres.password", "admin-api-key", "services.env"):
            assert _ignored_by_git(data_dir / name), name
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
