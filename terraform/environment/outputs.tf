output "image_repository" {
  description = "Push the image as <image_repository>/plant:<tag>."
  value       = module.registry.repository_url
}

output "api_url" {
  description = "URL of the API (null before the first image is deployed)."
  value       = one(module.run[*].api_url)
}

output "flower_url" {
  description = "URL of Flower."
  value       = one(module.run[*].flower_url)
}

output "migrate_job" {
  description = "Migration job; run it before each rollout."
  value       = one(module.run[*].migrate_job)
}

output "seal_keys_job" {
  description = "Job that seals retired signing keys after a rotation; its log holds the seals."
  value       = one(module.run[*].seal_keys_job)
}

output "database_connection_name" {
  description = "Cloud SQL connection name (PROJECT:REGION:INSTANCE)."
  value       = module.database.connection_name
}

output "redis_host" {
  description = "Memorystore private IP."
  value       = module.cache.host
}

output "secret_ids" {
  description = "Secret Manager secret per logical name."
  value       = module.secrets.secret_ids
}

output "retired_signing_keys" {
  description = "File name => content of each file of the retired-keys directory (retired and upcoming public keys, seals): what `plant signing-keys seal` run by hand needs in PLANT_RETIRED_SIGNING_KEYS_DIR."
  value       = local.retired_signing_key_files
}
