# Artifact Registry: the Docker repository the Plant image is pushed to and Cloud Run pulls
# from (the Cloud Run service agent reads repositories in its own project by default).

resource "google_artifact_registry_repository" "images" {
  project       = var.project_id
  location      = var.region
  repository_id = var.repository_id
  format        = "DOCKER"
  description   = "Plant container images (one image, every role)"
  labels        = var.labels
  #checkov:skip=CKV_GCP_84:Google-managed encryption keys; a customer-managed KMS key is a separate decision outside this deployment.

  # Tags are git commits: a tag, once pushed, always means the same image.
  docker_config {
    immutable_tags = true
  }

  cleanup_policy_dry_run = false

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = var.keep_recent_versions
    }
  }

  cleanup_policies {
    id     = "delete-untagged"
    action = "DELETE"
    condition {
      tag_state  = "UNTAGGED"
      older_than = "604800s"
    }
  }
}
