# Secret Manager holds every secret Plant's services read, one secret each. The values come
# from the environment root (generated there or derived from the database and cache), and
# Cloud Run mounts each as a file (a secret volume) whose path the container's *_FILE variable
# names: never an environment variable. Who may read which secret is granted per service
# account in the run module.

locals {
  # logical name => secret id suffix. The set is fixed: services reference these names.
  # database_url is the schema owner's (the migrate job's only); runtime_database_url the
  # runtime role's (everything else that uses the database); runtime_role_password is that
  # role's password, which the migrate job sets on it.
  secrets = {
    database_url          = "database-url"
    runtime_database_url  = "runtime-database-url"
    runtime_role_password = "runtime-role-password"
    redis_url             = "redis-url"
    signing_key           = "signing-key"
    flower_basic_auth     = "flower-basic-auth"
    bootstrap_admin_key   = "bootstrap-admin-key"
  }
}

resource "google_secret_manager_secret" "this" {
  for_each  = local.secrets
  project   = var.project_id
  secret_id = "${var.name_prefix}-${each.value}"
  labels    = merge(var.labels, { "plant-secret" = each.value })

  replication {
    auto {}
  }
}

resource "google_secret_manager_secret_version" "this" {
  for_each    = local.secrets
  secret      = google_secret_manager_secret.this[each.key].id
  secret_data = var.secret_values[each.key]
  # A new value is a new version. The old one is left enabled (Terraform forgets it): the
  # revisions still running pin it, and their new instances, or a rollback, read it at start.
  # Disable it in Secret Manager once no revision uses it.
  deletion_policy = "ABANDON"
}

# Retired signing keys and their seals (models/keys.py): one secret, one version per file,
# mounted as a directory by the run module. Not secret, but kept where the database's
# writers cannot reach: whoever could add a key here could vouch for forged versions.
resource "google_secret_manager_secret" "retired_signing_keys" {
  project   = var.project_id
  secret_id = "${var.name_prefix}-retired-signing-keys"
  labels    = merge(var.labels, { "plant-secret" = "retired-signing-keys" })

  replication {
    auto {}
  }
}

resource "google_secret_manager_secret_version" "retired_signing_key" {
  for_each        = var.retired_signing_key_files
  secret          = google_secret_manager_secret.retired_signing_keys.id
  secret_data     = each.value
  deletion_policy = "ABANDON" # as above: running revisions mount the versions they pinned
}
