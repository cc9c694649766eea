variable "project_id" {
  description = "Project that owns the secrets."
  type        = string
}

variable "name_prefix" {
  description = "Prefix of every secret id, e.g. plant-prod."
  type        = string
}

variable "secret_values" {
  description = "Value of each secret: database_url (the schema owner's), runtime_database_url, runtime_role_password, redis_url, signing_key, flower_basic_auth, bootstrap_admin_key."
  type        = map(string)
  sensitive   = true

  validation {
    condition = (
      length(var.secret_values) == 7 &&
      alltrue([for name in ["database_url", "runtime_database_url", "runtime_role_password", "redis_url", "signing_key", "flower_basic_auth", "bootstrap_admin_key"] : contains(keys(var.secret_values), name)])
    )
    error_message = "secret_values must have exactly: database_url, runtime_database_url, runtime_role_password, redis_url, signing_key, flower_basic_auth, bootstrap_admin_key."
  }
}

variable "retired_signing_key_files" {
  description = "File name => content for the retired-keys directory: <name>.pem (a retired key's public half), <name>.next.pem (an upcoming key's) and <kid>.seal.json (a seal). Public material: it lands in state and tfvars in the clear."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for name in keys(var.retired_signing_key_files) : can(regex("^[A-Za-z0-9_-][A-Za-z0-9._-]*\\.(pem|seal\\.json)$", name))])
    error_message = "retired_signing_key_files: names are <name>.pem or <kid>.seal.json (letters, digits, '.', '_', '-')."
  }
  validation {
    condition     = alltrue([for name, text in var.retired_signing_key_files : !endswith(name, ".pem") || !strcontains(text, "PRIVATE KEY")])
    error_message = "retired_signing_key_files: a retired key is shipped as its public half only (no PRIVATE KEY)."
  }
  validation {
    condition     = alltrue([for name, text in var.retired_signing_key_files : !endswith(name, ".seal.json") || try(jsondecode(text).kid == trimsuffix(name, ".seal.json"), false)])
    error_message = "retired_signing_key_files: <kid>.seal.json must hold JSON whose \"kid\" is <kid> (the services refuse to start otherwise)."
  }
}

variable "labels" {
  description = "Labels for every secret."
  type        = map(string)
  default     = {}
}
