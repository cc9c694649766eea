terraform {
  required_version = ">= 1.5.0"

  required_providers {
    # Resource arguments are checked against google 6.50.0 (tests/data/terraform-provider-schema.json);
    # 7.x removed nothing this configuration uses.
    google = {
      source  = "hashicorp/google"
      version = ">= 6.50.0, < 8.0.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.7"
    }
    tls = {
      source  = "hashicorp/tls"
      version = "~> 4.1"
    }
  }

  # State holds generated secrets (database password, signing key): keep it in a private,
  # versioned bucket. `terraform init -backend-config=dev.gcs.tfbackend` picks the bucket.
  backend "gcs" {}
}

provider "google" {
  project = var.project_id
  region  = var.region

  default_labels = {
    app         = "plant"
    environment = var.environment
  }
}
