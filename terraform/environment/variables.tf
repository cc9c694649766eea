# --- Where ---

variable "project_id" {
  description = "Google Cloud project of this environment."
  type        = string
}

variable "region" {
  description = "Region for everything (Cloud Run, Cloud SQL, Memorystore, Artifact Registry)."
  type        = string
}

variable "environment" {
  description = "Environment name, part of every resource name: plant-<environment>-..."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,10}$", var.environment))
    error_message = "environment must be 2-11 lowercase letters or digits, starting with a letter."
  }
}

variable "image_tag" {
  description = "Tag of the Plant image in this environment's Artifact Registry (a git commit). Leave unset on the very first apply, before any image is pushed: the Cloud Run resources are then skipped."
  type        = string
  default     = null
}

variable "deletion_protection" {
  description = "Protect the database and the Cloud Run resources from deletion."
  type        = bool
  default     = true
}

# --- Signing keys ---

variable "signing_key_generation" {
  description = "Generation of the active signing key. Raise it by one to rotate: the next key (already trusted everywhere) signs, every older one is shipped as a retired key, and a new next key is made. Never lower it."
  type        = number
  default     = 1

  validation {
    condition     = var.signing_key_generation >= 1 && floor(var.signing_key_generation) == var.signing_key_generation
    error_message = "signing_key_generation is a whole number, 1 or more."
  }
}

variable "signing_key_seals" {
  description = "kid => the <kid>.seal.json that `plant signing-keys seal` wrote for that retired key (its text). Shipped beside the retired keys."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for kid in keys(var.signing_key_seals) : can(regex("^[A-Za-z0-9_-]+$", kid))])
    error_message = "signing_key_seals: keys are kids (letters, digits, '_', '-')."
  }
  # A seal the services cannot load stops every API and worker instance from starting.
  validation {
    condition     = alltrue([for kid, text in var.signing_key_seals : try(jsondecode(text).kid == kid, false)])
    error_message = "signing_key_seals: each value is the JSON of <kid>.seal.json, whose \"kid\" is its key."
  }
}

# --- Network ---

variable "subnet_cidr" {
  description = "Subnet for Cloud Run Direct VPC egress."
  type        = string
  default     = "10.10.0.0/24"
}

variable "private_service_access_cidr" {
  description = "Range for Private Service Access (Cloud SQL, Memorystore)."
  type        = string
  default     = "10.20.0.0/16"
}

# --- Database ---

variable "database_version" {
  description = "POSTGRES_16 or POSTGRES_17."
  type        = string
  default     = "POSTGRES_17"
}

variable "database_edition" {
  description = "Cloud SQL edition: ENTERPRISE or ENTERPRISE_PLUS."
  type        = string
  default     = "ENTERPRISE"
}

variable "database_tier" {
  description = "Cloud SQL machine tier."
  type        = string
}

variable "database_availability_type" {
  description = "ZONAL or REGIONAL."
  type        = string
  default     = "ZONAL"
}

variable "database_disk_size_gb" {
  description = "Initial disk size (grows automatically)."
  type        = number
  default     = 20
}

variable "database_retained_backups" {
  description = "Daily backups kept."
  type        = number
  default     = 7
}

variable "database_log_retention_days" {
  description = "Days of point-in-time recovery."
  type        = number
  default     = 7
}

variable "database_flags" {
  description = "PostgreSQL flags (name => value)."
  type        = map(string)
  default     = {}
}

# --- Redis ---

variable "redis_tier" {
  description = "BASIC or STANDARD_HA."
  type        = string
  default     = "BASIC"
}

variable "redis_memory_size_gb" {
  description = "Memorystore memory in GiB."
  type        = number
  default     = 1
}

# --- Access ---

variable "api_ingress" {
  description = "API ingress: INGRESS_TRAFFIC_ALL, INGRESS_TRAFFIC_INTERNAL_ONLY or INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER."
  type        = string
  default     = "INGRESS_TRAFFIC_ALL"
}

variable "allow_unauthenticated_api" {
  description = "Let anyone invoke the API (allUsers). Off unless asked for."
  type        = bool
  default     = false
}

variable "api_invokers" {
  description = "Principals allowed to invoke the API."
  type        = list(string)
  default     = []
}

variable "flower_enabled" {
  description = "Deploy Flower."
  type        = bool
  default     = true
}

variable "flower_user" {
  description = "Flower basic-auth user name (the password is generated into Secret Manager)."
  type        = string
  default     = "admin"
}

variable "flower_invokers" {
  description = "Principals allowed to open Flower."
  type        = list(string)
  default     = []
}

# --- Capacity ---

variable "api_min_instances" {
  description = "API instances kept warm."
  type        = number
  default     = 0
}

variable "api_max_instances" {
  description = "Most API instances."
  type        = number
  default     = 5
}

variable "api_cpu" {
  description = "vCPUs per API instance."
  type        = string
  default     = "1"
}

variable "api_memory" {
  description = "Memory per API instance."
  type        = string
  default     = "1Gi"
}

variable "api_web_concurrency" {
  description = "gunicorn processes per API instance."
  type        = number
  default     = 2
}

variable "worker_instances" {
  description = "Default-queue worker instances."
  type        = number
  default     = 1
}

variable "worker_audit_instances" {
  description = "Audit-queue worker instances."
  type        = number
  default     = 1
}

variable "worker_concurrency" {
  description = "Celery processes per default-queue worker instance."
  type        = number
  default     = 2
}

variable "worker_cpu" {
  description = "vCPUs per worker instance."
  type        = string
  default     = "1"
}

variable "worker_memory" {
  description = "Memory per worker instance."
  type        = string
  default     = "1Gi"
}

# --- Plant ---

variable "embedder" {
  description = "PLANT_EMBEDDER, the same for the API, both worker pools and the migrate job: hashing (built in, the code's default) or sentence-transformers (needs an image with that package)."
  type        = string
  default     = "hashing"

  validation {
    condition     = contains(["hashing", "sentence-transformers"], var.embedder)
    error_message = "embedder must be hashing or sentence-transformers."
  }
}
