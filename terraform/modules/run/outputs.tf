output "api_url" {
  description = "URL of the API service."
  value       = google_cloud_run_v2_service.api.uri
}

output "flower_url" {
  description = "URL of Flower (null when disabled)."
  value       = var.flower_enabled ? google_cloud_run_v2_service.flower[0].uri : null
}

output "migrate_job" {
  description = "Name of the migration job."
  value       = google_cloud_run_v2_job.migrate.name
}

output "seal_keys_job" {
  description = "Name of the job that seals retired signing keys."
  value       = google_cloud_run_v2_job.seal_keys.name
}

output "service_accounts" {
  description = "Service account email per role."
  value       = { for role, account in google_service_account.runtime : role => account.email }
}
