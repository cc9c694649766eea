# Cloud SQL for PostgreSQL with a private IP only, daily backups with point-in-time recovery,
# and flags set from a variable. The schema, pgvector included (CREATE EXTENSION vector),
# is made by Plant's migrations: the user below belongs to cloudsqlsuperuser, which may
# create extensions.
#
# Two database roles (README, "The database roles"): user_name owns the schema and is used by
# the migrate job only; runtime_user_name, which owns nothing, is what the API, the workers
# and the seal-keys job connect as, so none of them can lift the append-only guards
# (ALTER TABLE ... DISABLE TRIGGER is the owner's).
#
# Plant connects through the Cloud SQL connector that Cloud Run mounts at /cloudsql (a Unix
# socket per instance), so database_url uses host=/cloudsql/<connection name>: no IP address
# and no authorized networks; the connector brings its own short-lived client certificate
# and is authorized by the caller's roles/cloudsql.client.

locals {
  # Logging every production database should have, set below as explicit blocks (so that
  # scanners can read them); database_flags may override any of them and add others.
  # Connections and disconnections are logged (who reached the database, and when), as
  # are DDL statements, lock waits, temp files, checkpoints and errors. Statement text
  # beyond DDL is not: it could carry personal data.
  baseline_flags = [
    "log_checkpoints", "log_connections", "log_disconnections", "log_lock_waits",
    "log_temp_files", "log_statement", "log_min_messages", "log_min_error_statement",
    "log_min_duration_statement",
  ]
  extra_flags = { for name, value in var.database_flags : name => value if !contains(local.baseline_flags, name) }
}

resource "google_sql_database_instance" "postgres" {
  #checkov:skip=CKV_GCP_79:Plant is deployed on PostgreSQL 16 or 17 (database_version validates it); moving to 18 is a deliberate upgrade, not a scanner default.
  #checkov:skip=CKV_GCP_108:log_hostname makes PostgreSQL reverse-resolve every client; all clients arrive through the Cloud SQL connector, so it adds latency and no information.
  #checkov:skip=CKV_GCP_110:pgAudit also needs CREATE EXTENSION pgaudit per database; Plant's signed append-only chain is its audit trail. Enable it through database_flags when a compliance regime asks.
  #checkov:skip=CKV2_GCP_13:log_duration writes a line for every statement the API runs; slow statements are what matters and log_min_duration_statement covers them when set.
  project             = var.project_id
  name                = var.instance_name
  region              = var.region
  database_version    = var.database_version
  deletion_protection = var.deletion_protection

  settings {
    tier              = var.tier
    edition           = var.edition
    availability_type = var.availability_type
    disk_type         = "PD_SSD"
    disk_size         = var.disk_size_gb
    disk_autoresize   = true
    # The API-side guard, which also stops deletion from the console or gcloud.
    deletion_protection_enabled = var.deletion_protection
    # Deleting an instance deletes its automated backups too: a protected one keeps them (for
    # their retention), so whatever removes it, the chain can still be restored.
    retain_backups_on_delete = var.deletion_protection
    user_labels              = var.labels

    ip_configuration {
      ipv4_enabled       = false
      private_network    = var.private_network
      allocated_ip_range = var.allocated_ip_range
      # Only TLS with a client certificate, which is what the Cloud SQL connector behind
      # /cloudsql presents (an ephemeral one, per service account). Nothing else gets in.
      ssl_mode                                      = "TRUSTED_CLIENT_CERTIFICATE_REQUIRED"
      enable_private_path_for_google_cloud_services = true
    }

    backup_configuration {
      enabled                        = true
      start_time                     = var.backup_start_time
      point_in_time_recovery_enabled = true
      transaction_log_retention_days = var.transaction_log_retention_days

      backup_retention_settings {
        retained_backups = var.retained_backups
        retention_unit   = "COUNT"
      }
    }

    database_flags {
      name  = "log_checkpoints"
      value = lookup(var.database_flags, "log_checkpoints", "on")
    }
    database_flags {
      name  = "log_connections"
      value = lookup(var.database_flags, "log_connections", "on")
    }
    database_flags {
      name  = "log_disconnections"
      value = lookup(var.database_flags, "log_disconnections", "on")
    }
    database_flags {
      name  = "log_lock_waits"
      value = lookup(var.database_flags, "log_lock_waits", "on")
    }
    database_flags {
      name  = "log_temp_files"
      value = lookup(var.database_flags, "log_temp_files", "0")
    }
    database_flags {
      name  = "log_statement"
      value = lookup(var.database_flags, "log_statement", "ddl")
    }
    database_flags {
      name  = "log_min_messages"
      value = lookup(var.database_flags, "log_min_messages", "error")
    }
    database_flags {
      name  = "log_min_error_statement"
      value = lookup(var.database_flags, "log_min_error_statement", "error")
    }
    database_flags {
      name  = "log_min_duration_statement"
      value = lookup(var.database_flags, "log_min_duration_statement", "-1")
    }
    dynamic "database_flags" {
      for_each = local.extra_flags
      content {
        name  = database_flags.key
        value = database_flags.value
      }
    }

    insights_config {
      query_insights_enabled  = true
      query_string_length     = 1024
      record_application_tags = false
      record_client_address   = false
    }

    maintenance_window {
      day          = var.maintenance_day
      hour         = var.maintenance_hour
      update_track = "stable"
    }
  }
}

resource "google_sql_database" "plant" {
  project  = var.project_id
  instance = google_sql_database_instance.postgres.name
  name     = var.database_name
  # deletion_protection guards the instance only: a plan that destroys or replaces it would
  # delete this database first (DROP DATABASE, the chain with it) and fail on the instance
  # afterwards. Protected, Terraform forgets the database instead of dropping it.
  deletion_policy = var.deletion_protection ? "ABANDON" : "DELETE"
}

# Letters and digits only: the password is embedded in a URL.
resource "random_password" "app" {
  length  = 40
  special = false
}

# The schema owner: the migrate job's login (database_url), and nobody else's.
resource "google_sql_user" "app" {
  project  = var.project_id
  instance = google_sql_database_instance.postgres.name
  name     = var.user_name
  password = random_password.app.result
}

# The runtime role's password. The role itself is deliberately not a google_sql_user: Cloud
# SQL makes every user it creates a member of cloudsqlsuperuser, with CREATEROLE and
# CREATEDB, which is more than a role that must not lift the guards may hold. The migrate job
# (`plant db upgrade`, connected as the owner above) creates it in SQL, CREATE ROLE ... LOGIN
# and nothing else, with this password (PLANT_RUNTIME_ROLE_PASSWORD), or sets this password
# on it, then grants it DML on the schema (models/migrate.py::grant_runtime_role).
resource "random_password" "runtime" {
  length  = 40
  special = false

  lifecycle {
    # Cross-variable validation needs Terraform 1.9; this configuration allows 1.5.
    precondition {
      condition     = var.runtime_user_name != var.user_name
      error_message = "runtime_user_name must differ from user_name: the schema owner can lift the append-only guards."
    }
  }
}
