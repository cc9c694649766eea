variable "project_id" {
  description = "Project that owns the repository."
  type        = string
}

variable "region" {
  description = "Repository location (keep it with Cloud Run)."
  type        = string
}

variable "repository_id" {
  description = "Repository name."
  type        = string
  default     = "plant"
}

variable "keep_recent_versions" {
  description = "Image versions always kept, however old (rollback targets)."
  type        = number
  default     = 20
}

variable "labels" {
  description = "Labels for the repository."
  type        = map(string)
  default     = {}
}
