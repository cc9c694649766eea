output "secret_ids" {
  description = "logical name => secret id. Depends on the versions, so a service that reads a secret starts only once it has a value."
  value       = { for name, secret in google_secret_manager_secret.this : name => secret.secret_id }
  depends_on  = [google_secret_manager_secret_version.this]
}

output "secret_versions" {
  description = "logical name => version number. Services pin it, so a new value rolls out a new revision."
  value       = { for name, version in google_secret_manager_secret_version.this : name => version.version }
}
