variable "project_id" {
  description = "Project that owns the instance."
  type        = string
}

variable "region" {
  description = "Region of the instance (keep it with Cloud Run)."
  type        = string
}

variable "instance_name" {
  description = "Cloud SQL instance name. A deleted name cannot be reused for about a week."
  type        = string
}

variable "database_version" {
  description = "PostgreSQL major version: POSTGRES_16 or POSTGRES_17."
  type        = string
  default     = "POSTGRES_17"

  validation {
    condition     = contains(["POSTGRES_16", "POSTGRES_17"], var.database_version)
    error_message = "database_version must be POSTGRES_16 or POSTGRES_17."
  }
}

variable "edition" {
  description = "ENTERPRISE or ENTERPRISE_PLUS. Set explicitly: new PostgreSQL 16+ instances otherwise default to ENTERPRISE_PLUS, which rejects db-custom tiers."
  type        = string
  default     = "ENTERPRISE"

  validation {
    condition     = contains(["ENTERPRISE", "ENTERPRISE_PLUS"], var.edition)
    error_message = "edition must be ENTERPRISE or ENTERPRISE_PLUS."
  }
}

variable "tier" {
  description = "Machine tier, e.g. db-custom-1-3840 (ENTERPRISE) or db-perf-optimized-N-2 (ENTERPRISE_PLUS)."
  type        = string
}

variable "availability_type" {
  description = "ZONAL, or REGIONAL for a standby in a second zone with automatic failover."
  type        = string
  default     = "ZONAL"

  validation {
    condition     = contains(["ZONAL", "REGIONAL"], var.availability_type)
    error_message = "availability_type must be ZONAL or REGIONAL."
  }
}

variable "disk_size_gb" {
  description = "Initial SSD size; it grows automatically."
  type        = number
  default     = 20
}

variable "private_network" {
  description = "VPC id the private IP lives in; must already have Private Service Access."
  type        = string
}

variable "allocated_ip_range" {
  description = "Name of the Private Service Access range to take the IP from."
  type        = string
}

variable "deletion_protection" {
  description = "Refuse to delete the instance (in Terraform and in the API)."
  type        = bool
  default     = true
}

variable "backup_start_time" {
  description = "Daily backup window start, HH:MM in UTC."
  type        = string
  default     = "02:00"
}

variable "retained_backups" {
  description = "Daily backups kept."
  type        = number
  default     = 7
}

variable "transaction_log_retention_days" {
  description = "Days of write-ahead log kept for point-in-time recovery (1-7 on ENTERPRISE, up to 35 on ENTERPRISE_PLUS)."
  type        = number
  default     = 7
}

variable "database_flags" {
  description = "PostgreSQL flags (name => value), e.g. { max_connections = \"200\" }, on top of (and overriding) the module's logging baseline."
  type        = map(string)
  default     = {}
}

variable "maintenance_day" {
  description = "Day of week for maintenance, 1 (Monday) to 7 (Sunday)."
  type        = number
  default     = 7
}

variable "maintenance_hour" {
  description = "Hour (UTC) maintenance may start."
  type        = number
  default     = 3
}

variable "database_name" {
  description = "Database Plant uses."
  type        = string
  default     = "plant"
}

variable "user_name" {
  description = "The schema owner, a Cloud SQL user (password generated): the migrate job's login only."
  type        = string
  default     = "plant"
}

variable "runtime_user_name" {
  description = "The runtime role the API, the workers and the seal-keys job connect as (password generated). The migrate job creates it (LOGIN only) and grants it DML; it is not a Cloud SQL user. Must differ from user_name."
  type        = string
  default     = "plant_runtime"

  validation {
    condition     = can(regex("^[a-z_][a-z0-9_]{0,62}$", var.runtime_user_name)) && !startswith(var.runtime_user_name, "pg_")
    error_message = "runtime_user_name must be a lowercase PostgreSQL identifier (a-z, 0-9, _; at most 63 characters, not starting with a digit or pg_)."
  }
}

variable "labels" {
  description = "Labels for the instance."
  type        = map(string)
  default     = {}
}
