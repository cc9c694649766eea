variable "project_id" {
  description = "Project to deploy into."
  type        = string
}

variable "region" {
  description = "Cloud Run region."
  type        = string
}

variable "name_prefix" {
  description = "Prefix of every service, job and service account name, e.g. plant-prod (at most 17 characters: service account ids are capped at 30)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,16}$", var.name_prefix))
    error_message = "name_prefix must be 3-17 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "image" {
  description = "Full image reference, e.g. europe-west1-docker.pkg.dev/PROJECT/plant/plant:<git sha>."
  type        = string
}

variable "network_id" {
  description = "VPC for Direct VPC egress (reaches Memorystore)."
  type        = string
}

variable "subnet_id" {
  description = "Subnet Cloud Run instances take their egress addresses from."
  type        = string
}

variable "cloudsql_connection_name" {
  description = "PROJECT:REGION:INSTANCE of the Cloud SQL instance, mounted at /cloudsql."
  type        = string
}

variable "cloudsql_instance_name" {
  description = "The Cloud SQL instance's name: the roles/cloudsql.client grants are conditioned on it."
  type        = string
}

variable "runtime_role" {
  description = "The database role api, the workers and seal-keys connect as (the database module's runtime_user_name): the migrate job's PLANT_RUNTIME_ROLE, which it creates and grants."
  type        = string

  validation {
    condition     = can(regex("^[a-z_][a-z0-9_]{0,62}$", var.runtime_role)) && !startswith(var.runtime_role, "pg_")
    error_message = "runtime_role must be a lowercase PostgreSQL identifier (a-z, 0-9, _; at most 63 characters, not starting with a digit or pg_)."
  }
}

variable "secret_ids" {
  description = "Secret Manager secret id per logical name (the secrets module's secret_ids)."
  type        = map(string)
}

variable "secret_versions" {
  description = "Secret version per logical name (the secrets module's secret_versions)."
  type        = map(string)
}

variable "retired_signing_key_files" {
  description = "File name => version of the retired_signing_keys secret, mounted in the API and the workers (the secrets module's retired_signing_key_files). Empty: no volume."
  type        = map(string)
  default     = {}
}

variable "deletion_protection" {
  description = "Refuse to delete services, worker pools and the job."
  type        = bool
  default     = true
}

variable "labels" {
  description = "Labels for every service, pool and job."
  type        = map(string)
  default     = {}
}

# --- API ---

variable "api_ingress" {
  description = "Who can reach the API's URL: INGRESS_TRAFFIC_ALL, INGRESS_TRAFFIC_INTERNAL_ONLY or INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER. IAM still decides who may invoke it."
  type        = string
  default     = "INGRESS_TRAFFIC_ALL"

  validation {
    condition     = contains(["INGRESS_TRAFFIC_ALL", "INGRESS_TRAFFIC_INTERNAL_ONLY", "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"], var.api_ingress)
    error_message = "api_ingress must be INGRESS_TRAFFIC_ALL, INGRESS_TRAFFIC_INTERNAL_ONLY or INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER."
  }
}

variable "allow_unauthenticated_api" {
  description = "Grant roles/run.invoker to allUsers on the API. Off by default: callers need an identity with run.invoker (see api_invokers)."
  type        = bool
  default     = false
}

variable "api_invokers" {
  description = "Principals allowed to call the API, e.g. [\"group:plant-users@example.com\"]."
  type        = list(string)
  default     = []
}

variable "api_min_instances" {
  description = "Instances kept warm."
  type        = number
  default     = 0
}

variable "api_max_instances" {
  description = "Upper bound on API instances (each holds database connections: keep max * WEB_CONCURRENCY * pool size under the database's max_connections)."
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
  description = "gunicorn worker processes per instance (WEB_CONCURRENCY); each runs 8 threads. Set it: inside a container the CPU count gunicorn would see is the host's."
  type        = number
  default     = 2
}

variable "api_request_concurrency" {
  description = "Requests one instance takes at once; at most WEB_CONCURRENCY * 8 threads. Unset: exactly that, so it follows api_web_concurrency."
  type        = number
  default     = null
}

# --- Workers and beat ---

variable "worker_pool_launch_stage" {
  description = "launch_stage for the worker pools. BETA works whether or not worker pools are GA in your project; the reported value is ignored afterwards."
  type        = string
  default     = "BETA"
}

variable "worker_instances" {
  description = "Instances of the default-queue worker."
  type        = number
  default     = 1
}

variable "worker_audit_instances" {
  description = "Instances of the audit-queue worker (each runs one job at a time)."
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

# --- Flower ---

variable "flower_enabled" {
  description = "Deploy Flower (one always-on instance)."
  type        = bool
  default     = true
}

variable "flower_invokers" {
  description = "Principals allowed to open Flower (it also asks for its basic-auth password), e.g. [\"group:plant-ops@example.com\"]."
  type        = list(string)
  default     = []
}

# --- Every process ---

variable "embedder" {
  description = "PLANT_EMBEDDER of the API, both worker pools and the migrate job, the same for all: hashing (built in, the code's default) or sentence-transformers (needs an image with that package). Changing it on a registry with certified skills makes the audit report their stored vectors (README, PLANT_EMBEDDER)."
  type        = string
  default     = "hashing"

  validation {
    condition     = contains(["hashing", "sentence-transformers"], var.embedder)
    error_message = "embedder must be hashing or sentence-transformers."
  }
}
