# Plant on Cloud Run, one image for every role (docker/entrypoint.sh picks it from args):
#
#   api           Cloud Run service (HTTP)
#   worker        Cloud Run worker pool, Celery on the default and maintenance queues
#   worker-audit  Cloud Run worker pool, Celery on the audit queue, one job at a time
#   beat          Cloud Run worker pool with exactly one instance: the only scheduler
#   flower        Cloud Run service, optional, IAM-protected and behind basic auth
#   migrate       Cloud Run job: `plant db upgrade` as the schema owner (the schema, then the
#                 runtime role and its grants, then the bootstrap admin API key), run before
#                 each rollout
#   seal-keys     Cloud Run job: `plant signing-keys seal` after a key rotation; prints the seals
#
# Workers and beat serve no HTTP, which is what worker pools are for: no port, no request
# routing, CPU always allocated. Every role that touches PostgreSQL mounts the Cloud SQL
# instance the v2 way, a cloud_sql_instance volume at /cloudsql, and DATABASE_URL names the
# socket (host=/cloudsql/<connection name>). Redis, and the Cloud SQL instance's private IP
# that the connector dials, are reached over Direct VPC egress: every role that uses either
# has it, the jobs included.
#
# Two database roles (README, "The database roles"). Only migrate connects as the schema
# owner (the database_url secret): the owner can ALTER TABLE ... DISABLE TRIGGER and so lift
# the append-only guards. It creates the runtime role (var.runtime_role, LOGIN only) from the
# runtime_role_password secret, or sets that password on it, and grants it DML; api, worker,
# worker-audit and seal-keys connect as that role (runtime_database_url), which owns nothing.
#
# Each role runs as its own service account, which may read only the secrets it needs and,
# if it uses the database, connect to Plant's Cloud SQL instance (roles/cloudsql.client, on a
# condition naming that instance).
#
# Every secret reaches its container as a file, never as an environment variable: an
# environment is inherited by every child process, readable in /proc/<pid>/environ and dumped
# by crash reporters. Each secret a role reads is a Cloud Run secret volume of its own (a
# volume holds one secret) named like the secret, holding the version Terraform wrote as the
# file `value`, mounted at /secrets/<secret>; the container gets the setting's *_FILE variable
# naming that file (DATABASE_URL_FILE, REDIS_URL_FILE, PLANT_SIGNING_KEY_FILE, ...), which
# Plant reads as the setting itself (models/settings.py) and docker/entrypoint.sh accepts as
# it. local.secret_files lists each identity's secret files; every resource makes its secret
# volumes, mounts and *_FILE variables from its identity's list, with dynamic blocks. The
# files are 0444 (the volume's default) and, on the second-generation execution
# environment, root's: readable by the image's user (uid 10001), which may not change them,
# as models/key_material.py::read_private_key_file wants of a signing key another user owns.

locals {
  cloudsql_volume = "cloudsql"
  cloudsql_mount  = "/cloudsql"

  # Retired signing keys (public PEMs) and their seals, as files: every role that verifies
  # signatures (api, worker, worker-audit) reads them from this directory
  # (PLANT_RETIRED_SIGNING_KEYS_DIR). One Secret Manager secret holds them, one version per
  # file; the volume exists only once there is a file to put in it.
  retired_keys_volume  = "retired-signing-keys"
  retired_keys_mount   = "/secrets/retired-signing-keys"
  retired_keys_volumes = length(var.retired_signing_key_files) > 0 ? [local.retired_keys_volume] : []

  identities = merge(
    {
      api     = "Plant API (Cloud Run service)"
      worker  = "Plant Celery workers (default, audit and maintenance queues)"
      beat    = "Plant Celery beat (the one scheduler)"
      migrate = "Plant schema migrations (Cloud Run job)"
      seal    = "Plant retired signing key seals (Cloud Run job)"
    },
    var.flower_enabled ? { flower = "Plant Flower (Celery monitor)" } : {},
  )

  # Least privilege: each identity reads only these secrets. database_url (the schema
  # owner's) is migrate's alone; everything else that uses the database gets the runtime
  # role's URL.
  secret_access = {
    api     = ["runtime_database_url", "redis_url", "signing_key", "retired_signing_keys"]
    worker  = ["runtime_database_url", "redis_url", "signing_key", "retired_signing_keys"]
    beat    = ["redis_url"]
    migrate = ["database_url", "runtime_role_password", "bootstrap_admin_key"]
    seal    = ["runtime_database_url", "signing_key", "retired_signing_keys"]
    flower  = ["redis_url", "flower_basic_auth"]
  }

  # What each secret but the retired keys (a directory, above) is called in a container: its
  # secret volume, mounted at /secrets/<volume>, and the setting's *_FILE variable naming the
  # file `value` there.
  secret_file_names = {
    database_url          = { volume = "database-url", variable = "DATABASE_URL_FILE" } # the schema owner's
    runtime_database_url  = { volume = "runtime-database-url", variable = "DATABASE_URL_FILE" }
    redis_url             = { volume = "redis-url", variable = "REDIS_URL_FILE" }
    signing_key           = { volume = "signing-key", variable = "PLANT_SIGNING_KEY_FILE" }
    runtime_role_password = { volume = "runtime-role-password", variable = "PLANT_RUNTIME_ROLE_PASSWORD_FILE" }
    # `plant db upgrade` makes this key a live admin API key (idempotent).
    bootstrap_admin_key = { volume = "bootstrap-admin-key", variable = "PLANT_ADMIN_API_KEY_FILE" }
    flower_basic_auth   = { volume = "flower-basic-auth", variable = "PLANT_FLOWER_BASIC_AUTH_FILE" }
  }

  # Per identity, the secret files its containers get: every secret it may read (secret_access)
  # but the retired keys, in that order. Each Cloud Run resource makes its secret volumes,
  # volume_mounts and *_FILE variables from its identity's list with dynamic blocks.
  secret_files = {
    for identity, secrets in local.secret_access : identity => [
      for secret in secrets : {
        secret     = secret
        volume     = local.secret_file_names[secret].volume
        mount_path = "/secrets/${local.secret_file_names[secret].volume}"
        variable   = local.secret_file_names[secret].variable
        file       = "/secrets/${local.secret_file_names[secret].volume}/value"
      } if secret != "retired_signing_keys"
    ]
  }

  secret_grants = merge([
    for identity, secrets in local.secret_access : {
      for secret in secrets : "${identity}/${secret}" => { identity = identity, secret = secret }
    } if contains(keys(local.identities), identity)
  ]...)

  cloudsql_clients = ["api", "worker", "migrate", "seal"]
}

# --- Identities -------------------------------------------------------------------------

resource "google_service_account" "runtime" {
  for_each     = local.identities
  project      = var.project_id
  account_id   = "${var.name_prefix}-${each.key}"
  display_name = each.value
}

resource "google_project_iam_member" "cloudsql_client" {
  for_each = toset(local.cloudsql_clients)
  project  = var.project_id
  role     = "roles/cloudsql.client"
  member   = "serviceAccount:${google_service_account.runtime[each.key].email}"

  # Plant's instance only: granted on the project unconditioned, the role reaches every Cloud SQL
  # instance the project holds.
  condition {
    title       = "${var.name_prefix}-cloudsql-instance"
    description = "Connect to the Plant Cloud SQL instance only"
    expression  = "resource.name == 'projects/${var.project_id}/instances/${var.cloudsql_instance_name}' && resource.type == 'sqladmin.googleapis.com/Instance'"
  }
}

resource "google_secret_manager_secret_iam_member" "access" {
  for_each  = local.secret_grants
  project   = var.project_id
  secret_id = var.secret_ids[each.value.secret]
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.runtime[each.value.identity].email}"
}

# --- API ----------------------------------------------------------------------------------

resource "google_cloud_run_v2_service" "api" {
  project             = var.project_id
  name                = "${var.name_prefix}-api"
  location            = var.region
  ingress             = var.api_ingress
  deletion_protection = var.deletion_protection
  labels              = var.labels

  template {
    service_account       = google_service_account.runtime["api"].email
    execution_environment = "EXECUTION_ENVIRONMENT_GEN2"
    # As many requests as the instance has gunicorn threads (WEB_CONCURRENCY x 8), unless set.
    max_instance_request_concurrency = coalesce(var.api_request_concurrency, var.api_web_concurrency * 8)
    # Long-polls (?wait=N) last at most 30 s.
    timeout = "60s"

    scaling {
      min_instance_count = var.api_min_instances
      max_instance_count = var.api_max_instances
    }

    vpc_access {
      egress = "PRIVATE_RANGES_ONLY"
      network_interfaces {
        network    = var.network_id
        subnetwork = var.subnet_id
      }
    }

    volumes {
      name = local.cloudsql_volume
      cloud_sql_instance {
        instances = [var.cloudsql_connection_name]
      }
    }
    dynamic "volumes" {
      for_each = local.secret_files["api"]
      content {
        name = volumes.value.volume
        secret {
          secret = var.secret_ids[volumes.value.secret]
          items {
            path    = "value"
            version = var.secret_versions[volumes.value.secret]
          }
        }
      }
    }
    dynamic "volumes" {
      for_each = local.retired_keys_volumes
      content {
        name = local.retired_keys_volume
        secret {
          secret = var.secret_ids["retired_signing_keys"]
          dynamic "items" {
            for_each = var.retired_signing_key_files
            content {
              path    = items.key
              version = items.value
            }
          }
        }
      }
    }

    containers {
      image = var.image
      args  = ["api"]

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = var.api_cpu
          memory = var.api_memory
        }
        cpu_idle          = true
        startup_cpu_boost = true
      }

      env {
        name  = "WEB_CONCURRENCY"
        value = tostring(var.api_web_concurrency)
      }
      env {
        name  = "PLANT_EMBEDDER" # as the workers and the migrate job: one embedder per deployment
        value = var.embedder
      }
      # DATABASE_URL_FILE is the runtime role's URL: it owns nothing.
      dynamic "env" {
        for_each = local.secret_files["api"]
        content {
          name  = env.value.variable
          value = env.value.file
        }
      }

      env {
        name  = "PLANT_RETIRED_SIGNING_KEYS_DIR"
        value = local.retired_keys_mount
      }
      volume_mounts {
        name       = local.cloudsql_volume
        mount_path = local.cloudsql_mount
      }
      dynamic "volume_mounts" {
        for_each = local.secret_files["api"]
        content {
          name       = volume_mounts.value.volume
          mount_path = volume_mounts.value.mount_path
        }
      }
      dynamic "volume_mounts" {
        for_each = local.retired_keys_volumes
        content {
          name       = local.retired_keys_volume
          mount_path = local.retired_keys_mount
        }
      }

      # /health answers 200 only once PostgreSQL (through /cloudsql) and Redis (through the
      # VPC) answer, so a revision that cannot reach either never takes traffic: a broken
      # wiring fails the rollout instead of serving errors.
      startup_probe {
        initial_delay_seconds = 0
        period_seconds        = 5
        timeout_seconds       = 3
        failure_threshold     = 24
        http_get {
          path = "/health"
        }
      }

      # Liveness asks only whether the process serves HTTP: restarting instances would not
      # fix a database outage, it would only add load when it ends.
      liveness_probe {
        period_seconds    = 30
        timeout_seconds   = 5
        failure_threshold = 3
        http_get {
          path = "/openapi.json"
        }
      }
    }
  }

  traffic {
    type    = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
    percent = 100
  }

  depends_on = [google_secret_manager_secret_iam_member.access, google_project_iam_member.cloudsql_client]
}

# Unauthenticated access only when a variable asks for it.
resource "google_cloud_run_v2_service_iam_member" "api_public" {
  count    = var.allow_unauthenticated_api ? 1 : 0
  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.api.name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

resource "google_cloud_run_v2_service_iam_member" "api_invokers" {
  for_each = toset(var.api_invokers)
  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.api.name
  role     = "roles/run.invoker"
  member   = each.value
}

# --- Workers --------------------------------------------------------------------------------

resource "google_cloud_run_v2_worker_pool" "worker" {
  project             = var.project_id
  name                = "${var.name_prefix}-worker"
  location            = var.region
  launch_stage        = var.worker_pool_launch_stage
  deletion_protection = var.deletion_protection
  labels              = var.labels

  scaling {
    scaling_mode          = "MANUAL"
    manual_instance_count = var.worker_instances
  }

  template {
    service_account = google_service_account.runtime["worker"].email

    vpc_access {
      egress = "PRIVATE_RANGES_ONLY"
      network_interfaces {
        network    = var.network_id
        subnetwork = var.subnet_id
      }
    }

    volumes {
      name = local.cloudsql_volume
      cloud_sql_instance {
        instances = [var.cloudsql_connection_name]
      }
    }
    dynamic "volumes" {
      for_each = local.secret_files["worker"]
      content {
        name = volumes.value.volume
        secret {
          secret = var.secret_ids[volumes.value.secret]
          items {
            path    = "value"
            version = var.secret_versions[volumes.value.secret]
          }
        }
      }
    }
    dynamic "volumes" {
      for_each = local.retired_keys_volumes
      content {
        name = local.retired_keys_volume
        secret {
          secret = var.secret_ids["retired_signing_keys"]
          dynamic "items" {
            for_each = var.retired_signing_key_files
            content {
              path    = items.key
              version = items.value
            }
          }
        }
      }
    }

    containers {
      image = var.image
      args  = ["worker"]

      resources {
        limits = {
          cpu    = var.worker_cpu
          memory = var.worker_memory
        }
      }

      env {
        name  = "PLANT_WORKER_CONCURRENCY"
        value = tostring(var.worker_concurrency)
      }
      env {
        name  = "PLANT_EMBEDDER"
        value = var.embedder
      }
      # DATABASE_URL_FILE is the runtime role's URL: it owns nothing.
      dynamic "env" {
        for_each = local.secret_files["worker"]
        content {
          name  = env.value.variable
          value = env.value.file
        }
      }

      env {
        name  = "PLANT_RETIRED_SIGNING_KEYS_DIR"
        value = local.retired_keys_mount
      }
      volume_mounts {
        name       = local.cloudsql_volume
        mount_path = local.cloudsql_mount
      }
      dynamic "volume_mounts" {
        for_each = local.secret_files["worker"]
        content {
          name       = volume_mounts.value.volume
          mount_path = volume_mounts.value.mount_path
        }
      }
      dynamic "volume_mounts" {
        for_each = local.retired_keys_volumes
        content {
          name       = local.retired_keys_volume
          mount_path = local.retired_keys_mount
        }
      }
    }
  }

  # Worker pools may still need launch_stage BETA; the API reports GA back once they are.
  lifecycle {
    ignore_changes = [launch_stage]
  }

  depends_on = [google_secret_manager_secret_iam_member.access, google_project_iam_member.cloudsql_client]
}

resource "google_cloud_run_v2_worker_pool" "worker_audit" {
  project             = var.project_id
  name                = "${var.name_prefix}-worker-audit"
  location            = var.region
  launch_stage        = var.worker_pool_launch_stage
  deletion_protection = var.deletion_protection
  labels              = var.labels

  scaling {
    scaling_mode          = "MANUAL"
    manual_instance_count = var.worker_audit_instances
  }

  template {
    service_account = google_service_account.runtime["worker"].email

    vpc_access {
      egress = "PRIVATE_RANGES_ONLY"
      network_interfaces {
        network    = var.network_id
        subnetwork = var.subnet_id
      }
    }

    volumes {
      name = local.cloudsql_volume
      cloud_sql_instance {
        instances = [var.cloudsql_connection_name]
      }
    }
    dynamic "volumes" {
      for_each = local.secret_files["worker"]
      content {
        name = volumes.value.volume
        secret {
          secret = var.secret_ids[volumes.value.secret]
          items {
            path    = "value"
            version = var.secret_versions[volumes.value.secret]
          }
        }
      }
    }
    dynamic "volumes" {
      for_each = local.retired_keys_volumes
      content {
        name = local.retired_keys_volume
        secret {
          secret = var.secret_ids["retired_signing_keys"]
          dynamic "items" {
            for_each = var.retired_signing_key_files
            content {
              path    = items.key
              version = items.value
            }
          }
        }
      }
    }

    containers {
      image = var.image
      # One audit job at a time, no prefetch (see docker/entrypoint.sh).
      args = ["worker-audit"]

      resources {
        limits = {
          cpu    = var.worker_cpu
          memory = var.worker_memory
        }
      }

      # The audit compares stored embeddings with the configured embedder's: the workers' one.
      env {
        name  = "PLANT_EMBEDDER"
        value = var.embedder
      }
      # DATABASE_URL_FILE is the runtime role's URL: it owns nothing.
      dynamic "env" {
        for_each = local.secret_files["worker"]
        content {
          name  = env.value.variable
          value = env.value.file
        }
      }

      env {
        name  = "PLANT_RETIRED_SIGNING_KEYS_DIR"
        value = local.retired_keys_mount
      }
      volume_mounts {
        name       = local.cloudsql_volume
        mount_path = local.cloudsql_mount
      }
      dynamic "volume_mounts" {
        for_each = local.secret_files["worker"]
        content {
          name       = volume_mounts.value.volume
          mount_path = volume_mounts.value.mount_path
        }
      }
      dynamic "volume_mounts" {
        for_each = local.retired_keys_volumes
        content {
          name       = local.retired_keys_volume
          mount_path = local.retired_keys_mount
        }
      }
    }
  }

  lifecycle {
    ignore_changes = [launch_stage]
  }

  depends_on = [google_secret_manager_secret_iam_member.access, google_project_iam_member.cloudsql_client]
}

# --- Beat -----------------------------------------------------------------------------------

# Exactly one beat: a second scheduler would fire every entry twice. The count is a literal,
# not a variable, on purpose. During a rollout the old and new instance may overlap for a
# moment, which the schedule tolerates: requeue only republishes job ids that workers claim
# conditionally, and scheduled jobs record their tick slot first (worker/schedule.py).
resource "google_cloud_run_v2_worker_pool" "beat" {
  project             = var.project_id
  name                = "${var.name_prefix}-beat"
  location            = var.region
  launch_stage        = var.worker_pool_launch_stage
  deletion_protection = var.deletion_protection
  labels              = var.labels

  scaling {
    scaling_mode          = "MANUAL"
    manual_instance_count = 1
  }

  template {
    service_account = google_service_account.runtime["beat"].email

    vpc_access {
      egress = "PRIVATE_RANGES_ONLY"
      network_interfaces {
        network    = var.network_id
        subnetwork = var.subnet_id
      }
    }

    dynamic "volumes" {
      for_each = local.secret_files["beat"]
      content {
        name = volumes.value.volume
        secret {
          secret = var.secret_ids[volumes.value.secret]
          items {
            path    = "value"
            version = var.secret_versions[volumes.value.secret]
          }
        }
      }
    }

    containers {
      image = var.image
      args  = ["beat"]

      resources {
        limits = {
          cpu    = "1"
          memory = "512Mi"
        }
      }

      dynamic "env" {
        for_each = local.secret_files["beat"]
        content {
          name  = env.value.variable
          value = env.value.file
        }
      }
      dynamic "volume_mounts" {
        for_each = local.secret_files["beat"]
        content {
          name       = volume_mounts.value.volume
          mount_path = volume_mounts.value.mount_path
        }
      }
    }
  }

  lifecycle {
    ignore_changes = [launch_stage]
  }

  # Beat's recovery goes to the maintenance queue that the default workers consume: a
  # rollout moves the workers first, so a new beat never waits on workers that ignore it.
  depends_on = [google_secret_manager_secret_iam_member.access, google_cloud_run_v2_worker_pool.worker]
}

# --- Flower ---------------------------------------------------------------------------------

resource "google_cloud_run_v2_service" "flower" {
  count               = var.flower_enabled ? 1 : 0
  project             = var.project_id
  name                = "${var.name_prefix}-flower"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_ALL"
  deletion_protection = var.deletion_protection
  labels              = var.labels

  template {
    service_account = google_service_account.runtime["flower"].email

    # Flower keeps task history in memory and follows events continuously: one instance,
    # always on, CPU allocated between requests.
    scaling {
      min_instance_count = 1
      max_instance_count = 1
    }

    vpc_access {
      egress = "PRIVATE_RANGES_ONLY"
      network_interfaces {
        network    = var.network_id
        subnetwork = var.subnet_id
      }
    }

    dynamic "volumes" {
      for_each = local.secret_files["flower"]
      content {
        name = volumes.value.volume
        secret {
          secret = var.secret_ids[volumes.value.secret]
          items {
            path    = "value"
            version = var.secret_versions[volumes.value.secret]
          }
        }
      }
    }

    containers {
      image = var.image
      args  = ["flower"]

      ports {
        container_port = 5555
      }

      resources {
        limits = {
          cpu    = "1"
          memory = "512Mi"
        }
        cpu_idle = false
      }

      dynamic "env" {
        for_each = local.secret_files["flower"]
        content {
          name  = env.value.variable
          value = env.value.file
        }
      }
      dynamic "volume_mounts" {
        for_each = local.secret_files["flower"]
        content {
          name       = volume_mounts.value.volume
          mount_path = volume_mounts.value.mount_path
        }
      }

      startup_probe {
        period_seconds    = 5
        timeout_seconds   = 3
        failure_threshold = 24
        http_get {
          path = "/healthcheck"
        }
      }
    }
  }

  traffic {
    type    = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
    percent = 100
  }

  depends_on = [google_secret_manager_secret_iam_member.access]
}

resource "google_cloud_run_v2_service_iam_member" "flower_invokers" {
  for_each = var.flower_enabled ? toset(var.flower_invokers) : toset([])
  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.flower[0].name
  role     = "roles/run.invoker"
  member   = each.value
}

# --- Migrations -----------------------------------------------------------------------------

# Run it before rolling out a new image (docs/deploy.md):
#   gcloud run jobs update <name> --image <new image> --region <region>
#   gcloud run jobs execute <name> --region <region> --wait
resource "google_cloud_run_v2_job" "migrate" {
  project             = var.project_id
  name                = "${var.name_prefix}-migrate"
  location            = var.region
  deletion_protection = var.deletion_protection
  labels              = var.labels

  template {
    task_count  = 1
    parallelism = 1

    template {
      service_account = google_service_account.runtime["migrate"].email
      max_retries     = 1
      timeout         = "900s"

      # The instance has a private IP only: the connector behind /cloudsql reaches it through
      # the VPC peering, so a job needs VPC egress as much as the services do.
      vpc_access {
        egress = "PRIVATE_RANGES_ONLY"
        network_interfaces {
          network    = var.network_id
          subnetwork = var.subnet_id
        }
      }

      volumes {
        name = local.cloudsql_volume
        cloud_sql_instance {
          instances = [var.cloudsql_connection_name]
        }
      }
      dynamic "volumes" {
        for_each = local.secret_files["migrate"]
        content {
          name = volumes.value.volume
          secret {
            secret = var.secret_ids[volumes.value.secret]
            items {
              path    = "value"
              version = var.secret_versions[volumes.value.secret]
            }
          }
        }
      }

      containers {
        image = var.image
        args  = ["migrate"]

        resources {
          limits = {
            cpu    = "1"
            memory = "512Mi"
          }
        }

        # After the upgrade, `plant db upgrade` creates this role (LOGIN only) with this
        # password, or sets it on the role, and grants it DML on the schema; it refuses a
        # role that could lift the guards.
        env {
          name  = "PLANT_RUNTIME_ROLE"
          value = var.runtime_role
        }
        # The upgrade fills in the reading vectors of skills written before migration 0026 with
        # this embedder: it must be the one the API and the workers embed with.
        env {
          name  = "PLANT_EMBEDDER"
          value = var.embedder
        }
        # DATABASE_URL_FILE is the schema owner's URL: only this job connects as the owner.
        dynamic "env" {
          for_each = local.secret_files["migrate"]
          content {
            name  = env.value.variable
            value = env.value.file
          }
        }

        volume_mounts {
          name       = local.cloudsql_volume
          mount_path = local.cloudsql_mount
        }
        dynamic "volume_mounts" {
          for_each = local.secret_files["migrate"]
          content {
            name       = volume_mounts.value.volume
            mount_path = volume_mounts.value.mount_path
          }
        }
      }
    }
  }

  depends_on = [google_secret_manager_secret_iam_member.access, google_project_iam_member.cloudsql_client]
}

# --- Sealing retired signing keys -----------------------------------------------------------

# Run once every revision signs with a new key (terraform/README.md, "Rotating the signing key"):
#   gcloud run jobs execute <name> --region <region> --wait
# It stores a ledger digest signed by the active key and prints each retired key's seal
# (<kid>.seal.json, one line of JSON) to its log, for signing_key_seals. Not retried: a
# second attempt would seal again with another digest, and the first seal may be the one logged.
resource "google_cloud_run_v2_job" "seal_keys" {
  project             = var.project_id
  name                = "${var.name_prefix}-seal-keys"
  location            = var.region
  deletion_protection = var.deletion_protection
  labels              = var.labels

  template {
    task_count  = 1
    parallelism = 1

    template {
      service_account = google_service_account.runtime["seal"].email
      max_retries     = 0
      timeout         = "900s"
      # Its signing key file must be root's, as on the API (GEN2 too) and the worker pools
      # (which have no other environment): on the first generation a single container's secret
      # files are its own user's, and Plant refuses a private key its owner left readable by others.
      execution_environment = "EXECUTION_ENVIRONMENT_GEN2"

      # The instance has a private IP only: the connector behind /cloudsql reaches it through
      # the VPC peering, so a job needs VPC egress as much as the services do.
      vpc_access {
        egress = "PRIVATE_RANGES_ONLY"
        network_interfaces {
          network    = var.network_id
          subnetwork = var.subnet_id
        }
      }

      volumes {
        name = local.cloudsql_volume
        cloud_sql_instance {
          instances = [var.cloudsql_connection_name]
        }
      }
      dynamic "volumes" {
        for_each = local.secret_files["seal"]
        content {
          name = volumes.value.volume
          secret {
            secret = var.secret_ids[volumes.value.secret]
            items {
              path    = "value"
              version = var.secret_versions[volumes.value.secret]
            }
          }
        }
      }
      dynamic "volumes" {
        for_each = local.retired_keys_volumes
        content {
          name = local.retired_keys_volume
          secret {
            secret = var.secret_ids["retired_signing_keys"]
            dynamic "items" {
              for_each = var.retired_signing_key_files
              content {
                path    = items.key
                version = items.value
              }
            }
          }
        }
      }

      containers {
        image = var.image
        args  = ["seal-keys"]

        resources {
          limits = {
            cpu    = "1"
            memory = "512Mi"
          }
        }

        # DATABASE_URL_FILE is the runtime role's URL: sealing stores a digest, plain DML.
        dynamic "env" {
          for_each = local.secret_files["seal"]
          content {
            name  = env.value.variable
            value = env.value.file
          }
        }
        env {
          name  = "PLANT_RETIRED_SIGNING_KEYS_DIR"
          value = local.retired_keys_mount
        }

        volume_mounts {
          name       = local.cloudsql_volume
          mount_path = local.cloudsql_mount
        }
        dynamic "volume_mounts" {
          for_each = local.secret_files["seal"]
          content {
            name       = volume_mounts.value.volume
            mount_path = volume_mounts.value.mount_path
          }
        }
        dynamic "volume_mounts" {
          for_each = local.retired_keys_volumes
          content {
            name       = local.retired_keys_volume
            mount_path = local.retired_keys_mount
          }
        }
      }
    }
  }

  depends_on = [google_secret_manager_secret_iam_member.access, google_project_iam_member.cloudsql_client]
}
