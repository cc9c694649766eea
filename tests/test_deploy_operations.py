"""Deployment operations the static deploy tests did not cover: every role that uses the
database can reach it, a protected database outlives a destroy, and the documented setup and
teardown steps work (stop 37's deploy review; each test failed on the code before its fix)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.test_deploy_terraform import (MODULES, ROOT, env_secrets, module_blocks, one, pod_template, resources,
                                         run_resources)

REPO = Path(__file__).resolve().parent.parent
DEPLOY_MD = REPO / "docs" / "deploy.md"


def test_every_role_that_mounts_cloud_sql_can_route_to_its_private_ip() -> None:
    """Finding 1. The instance has a private IP only (ipv4_enabled = false), so the connector
    behind /cloudsql dials 10.x through the VPC peering: a Cloud Run resource without VPC egress
    has no route there. The migrate and seal-keys jobs mounted /cloudsql with no vpc_access (the
    module gave egress only to roles that read REDIS_URL), so the very first migration, and every
    seal, could not connect."""
    sql = one(one(resources(MODULES / "database", "google_sql_database_instance")["postgres"]["settings"])
              ["ip_configuration"])
    assert sql["ipv4_enabled"] is False
    for name, (kind, body) in run_resources().items():
        pod = pod_template(kind, body)
        if not any("cloud_sql_instance" in v for v in pod.get("volumes", [])):
            continue
        assert "DATABASE_URL_FILE" in env_secrets(pod), name
        assert "vpc_access" in pod, f"{name} mounts the private-IP-only Cloud SQL instance with no VPC egress"
        vpc = one(pod["vpc_access"])
        assert one(vpc["network_interfaces"]) == {"network": "${var.network_id}", "subnetwork": "${var.subnet_id}"}, name
        assert vpc["egress"] == "PRIVATE_RANGES_ONLY", name


def test_the_database_outlives_a_destroy_of_its_protected_instance() -> None:
    """Finding 2. deletion_protection guards the Cloud SQL *instance* only. A plan that destroys
    or replaces it (a `terraform destroy -target=module.database`, a renamed environment)
    deletes google_sql_database first, which drops the database holding the chain, and only
    then fails on the instance's protection (hashicorp/terraform-provider-google#11969). With
    protection on, the database must be abandoned, never dropped, by Terraform."""
    database = resources(MODULES / "database", "google_sql_database")["plant"]
    assert database.get("deletion_policy") == '${var.deletion_protection ? "ABANDON" : "DELETE"}'



def test_the_documented_dev_teardown_accounts_for_the_undestroyable_signing_keys() -> None:
    """Finding 3. tls_private_key.signing has prevent_destroy, so a plain `terraform destroy`
    stops at plan time ("Instance cannot be destroyed") in every environment, dev included,
    while docs/deploy.md promised dev teardown with that one command."""
    signing = module_blocks(ROOT)["resource"][("tls_private_key", "signing")]
    assert "prevent_destroy = true" in (ROOT / "main.tf").read_text() and signing
    text = DEPLOY_MD.read_text()
    teardown = text[text.index("- Teardown"):]
    assert "terraform state rm" in teardown and "tls_private_key.signing" in teardown



def test_compose_setup_creates_the_retired_keys_directory_the_signers_mount() -> None:
    """Finding 4. docker-compose.yml bind-mounts ./secrets/retired, but the setup made only
    secrets/: Docker then creates the missing directory itself, owned by root, and the rotation
    steps' `openssl pkey ... -out secrets/retired/...` fail with Permission denied for the
    operator who is not root."""
    compose = (REPO / "docker-compose.yml").read_text()
    assert "./secrets/retired}:/run/plant-retired-keys:ro" in compose
    text = DEPLOY_MD.read_text()
    setup = text[text.index("2. The chain's signing key"):text.index("3. Build and start")]
    assert re.search(r"mkdir -p [^\n]*secrets/retired", setup), setup
