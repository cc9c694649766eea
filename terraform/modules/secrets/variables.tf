variable "project_id" {
  description = "Project that owns the secrets."
  type        = string
}

variable "name_prefix" {
  description = "Prefix of every secret id, e.g. plant-prod."
  type        = string
}

variable "secret_values" {
  description = "Value of each secret: database_url, redis_url, signing_key, flower_basic_auth, bootstrap_admin_key."
  type        = map(string)
  sensitive   = true

  validation {
    condition = (
      length(var.secret_values) == 5 &&
      alltrue([for name in ["database_url", "redis_url", "signing_key", "flower_basic_auth", "bootstrap_admin_key"] : contains(keys(var.secret_values), name)])
    )
    error_message = "secret_values must have exactly: database_url, redis_url, signing_key, flower_basic_auth, bootstrap_admin_key."
  }
}

variable "labels" {
  description = "Labels for every secret."
  type        = map(string)
  default     = {}
}
