# One environment of Plant on Google Cloud. dev.tfvars and prod.tfvars hold the examples;
# each environment has its own project and its own state (dev.gcs.tfbackend, prod.gcs.tfbackend).
#
# Two applies bring an environment up from nothing (terraform/README.md):
#   1. without image_tag: APIs, network, Cloud SQL, Memorystore, secrets, Artifact Registry;
#   2. after pushing the image: with image_tag, the Cloud Run services, worker pools and job.

locals {
  name = "plant-${var.environment}"

  apis = [
    "artifactregistry.googleapis.com",
    "cloudresourcemanager.googleapis.com", # project IAM bindings
    "compute.googleapis.com",
    "iam.googleapis.com",
    "redis.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "servicenetworking.googleapis.com",
    "sqladmin.googleapis.com",
  ]
}

resource "google_project_service" "apis" {
  for_each           = toset(local.apis)
  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

module "network" {
  source = "../modules/network"

  project_id                  = var.project_id
  region                      = var.region
  name                        = local.name
  subnet_cidr                 = var.subnet_cidr
  private_service_access_cidr = var.private_service_access_cidr

  depends_on = [google_project_service.apis]
}

module "registry" {
  source = "../modules/registry"

  project_id = var.project_id
  region     = var.region

  depends_on = [google_project_service.apis]
}

module "database" {
  source = "../modules/database"

  project_id                     = var.project_id
  region                         = var.region
  instance_name                  = "${local.name}-pg"
  database_version               = var.database_version
  edition                        = var.database_edition
  tier                           = var.database_tier
  availability_type              = var.database_availability_type
  disk_size_gb                   = var.database_disk_size_gb
  private_network                = module.network.network_id
  allocated_ip_range             = module.network.private_service_access_range
  deletion_protection            = var.deletion_protection
  retained_backups               = var.database_retained_backups
  transaction_log_retention_days = var.database_log_retention_days
  database_flags                 = var.database_flags
}

module "cache" {
  source = "../modules/cache"

  project_id         = var.project_id
  region             = var.region
  name               = "${local.name}-redis"
  tier               = var.redis_tier
  memory_size_gb     = var.redis_memory_size_gb
  authorized_network = module.network.network_id
  reserved_ip_range  = module.network.private_service_access_range
}

# Generated here, stored only in Secret Manager (and this state). Letters and digits only,
# since two of them travel inside URLs and basic-auth headers.
resource "random_password" "flower" {
  length  = 32
  special = false
}

resource "random_password" "bootstrap_admin_key" {
  length  = 48
  special = false
}

# The chain's signing keys, one per generation. Generation signing_key_generation signs;
# every older one is shipped, as its public half, as a retired key (still trusted for what
# it signed), and the next one is created and shipped already, as an upcoming key
# (`*.next.pem`): so when a rotation rolls out, the revisions still on the old key already
# trust what the new one signs (README, "Key rotation"). To rotate, raise
# signing_key_generation by one; never lower it (the keys are protected from destroy). Once
# every revision runs on the new key, run the seal-keys job and put the seal it logs in
# signing_key_seals (terraform/README.md, "Rotating the signing key").
locals {
  signing_generations       = [for generation in range(1, var.signing_key_generation + 2) : tostring(generation)]
  active_signing_generation = tostring(var.signing_key_generation)
  retired_signing_key_files = merge(
    { for generation, key in tls_private_key.signing :
      (tonumber(generation) < var.signing_key_generation ? "generation-${generation}.pem" : "generation-${generation}.next.pem") => key.public_key_pem
    if generation != local.active_signing_generation },
    { for kid, seal in var.signing_key_seals : "${kid}.seal.json" => seal },
  )
}

resource "tls_private_key" "signing" {
  for_each  = toset(local.signing_generations)
  algorithm = "ED25519"

  # Destroying a key leaves what it signed unverifiable. Lowering signing_key_generation,
  # or destroying the environment, has to lift this deliberately first.
  lifecycle {
    prevent_destroy = true
  }
}

# The single key of earlier versions of this configuration is generation 1.
moved {
  from = tls_private_key.signing
  to   = tls_private_key.signing["1"]
}

module "secrets" {
  source = "../modules/secrets"

  project_id  = var.project_id
  name_prefix = local.name
  secret_values = {
    database_url          = module.database.database_url # the schema owner: the migrate job only
    runtime_database_url  = module.database.runtime_database_url
    runtime_role_password = module.database.runtime_password
    redis_url             = module.cache.redis_url
    signing_key           = tls_private_key.signing[local.active_signing_generation].private_key_pem_pkcs8
    flower_basic_auth     = "${var.flower_user}:${random_password.flower.result}"
    bootstrap_admin_key   = "plant_${random_password.bootstrap_admin_key.result}"
  }
  retired_signing_key_files = local.retired_signing_key_files

  depends_on = [google_project_service.apis]
}

module "run" {
  source = "../modules/run"
  # Nothing to run until an image is pushed: the first apply leaves image_tag unset.
  count = var.image_tag == null ? 0 : 1

  project_id                = var.project_id
  region                    = var.region
  name_prefix               = local.name
  image                     = "${module.registry.repository_url}/plant:${var.image_tag}"
  network_id                = module.network.network_id
  subnet_id                 = module.network.subnet_id
  cloudsql_connection_name  = module.database.connection_name
  cloudsql_instance_name    = module.database.instance_name
  runtime_role              = module.database.runtime_user_name
  secret_ids                = module.secrets.secret_ids
  secret_versions           = module.secrets.secret_versions
  retired_signing_key_files = module.secrets.retired_signing_key_files
  deletion_protection       = var.deletion_protection

  api_ingress               = var.api_ingress
  allow_unauthenticated_api = var.allow_unauthenticated_api
  api_invokers              = var.api_invokers
  api_min_instances         = var.api_min_instances
  api_max_instances         = var.api_max_instances
  api_cpu                   = var.api_cpu
  api_memory                = var.api_memory
  api_web_concurrency       = var.api_web_concurrency

  worker_instances       = var.worker_instances
  worker_audit_instances = var.worker_audit_instances
  worker_concurrency     = var.worker_concurrency
  worker_cpu             = var.worker_cpu
  worker_memory          = var.worker_memory

  flower_enabled  = var.flower_enabled
  flower_invokers = var.flower_invokers

  embedder = var.embedder
}
