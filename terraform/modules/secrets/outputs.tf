output "secret_ids" {
  description = "logical name => secret id. Depends on the versions, so a service that reads a secret starts only once it has a value."
  value = merge(
    { for name, secret in google_secret_manager_secret.this : name => secret.secret_id },
    { retired_signing_keys = google_secret_manager_secret.retired_signing_keys.secret_id },
  )
  depends_on = [google_secret_manager_secret_version.this, google_secret_manager_secret_version.retired_signing_key]
}

output "secret_versions" {
  description = "logical name => version number. Services pin it, so a new value rolls out a new revision."
  value       = { for name, version in google_secret_manager_secret_version.this : name => version.version }
}

output "retired_signing_key_files" {
  description = "File name => version of the retired_signing_keys secret, for the run module's volume items."
  value       = { for name, version in google_secret_manager_secret_version.retired_signing_key : name => version.version }
}
