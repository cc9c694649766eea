variable "project_id" {
  description = "Project that owns the instance."
  type        = string
}

variable "region" {
  description = "Region of the instance (keep it with Cloud Run)."
  type        = string
}

variable "name" {
  description = "Instance name."
  type        = string
}

variable "tier" {
  description = "BASIC (one node) or STANDARD_HA (replica with automatic failover)."
  type        = string
  default     = "BASIC"

  validation {
    condition     = contains(["BASIC", "STANDARD_HA"], var.tier)
    error_message = "tier must be BASIC or STANDARD_HA."
  }
}

variable "memory_size_gb" {
  description = "Memory in GiB."
  type        = number
  default     = 1
}

variable "redis_version" {
  description = "Memorystore Redis version."
  type        = string
  default     = "REDIS_7_2"

  validation {
    condition     = startswith(var.redis_version, "REDIS_7")
    error_message = "Plant is tested against Redis 7: use a REDIS_7_x version."
  }
}

variable "authorized_network" {
  description = "VPC id with Private Service Access."
  type        = string
}

variable "reserved_ip_range" {
  description = "Name of the Private Service Access range to take the IP from."
  type        = string
}

variable "rdb_snapshot_period" {
  description = "How often a snapshot is written (ONE_HOUR, SIX_HOURS, TWELVE_HOURS, TWENTY_FOUR_HOURS)."
  type        = string
  default     = "ONE_HOUR"
}

variable "labels" {
  description = "Labels for the instance."
  type        = map(string)
  default     = {}
}
