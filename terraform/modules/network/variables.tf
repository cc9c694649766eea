variable "project_id" {
  description = "Project that owns the network."
  type        = string
}

variable "region" {
  description = "Region of the subnet (the region Cloud Run runs in)."
  type        = string
}

variable "name" {
  description = "Name prefix, e.g. plant-prod."
  type        = string
}

variable "subnet_cidr" {
  description = "Subnet for Cloud Run Direct VPC egress; each instance takes addresses from it (a /24 serves about 100 instances)."
  type        = string
  default     = "10.10.0.0/24"

  validation {
    condition     = can(cidrhost(var.subnet_cidr, 0)) && tonumber(split("/", var.subnet_cidr)[1]) <= 26
    error_message = "subnet_cidr must be a CIDR block of /26 or larger (Cloud Run needs room to scale)."
  }
}

variable "private_service_access_cidr" {
  description = "Range allocated to Private Service Access (Cloud SQL and Memorystore private IPs)."
  type        = string
  default     = "10.20.0.0/16"

  validation {
    condition     = can(cidrhost(var.private_service_access_cidr, 0)) && tonumber(split("/", var.private_service_access_cidr)[1]) <= 24
    error_message = "private_service_access_cidr must be a CIDR block of /24 or larger."
  }
}
