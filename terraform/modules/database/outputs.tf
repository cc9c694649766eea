output "connection_name" {
  description = "PROJECT:REGION:INSTANCE, what Cloud Run's cloud_sql_instance volume mounts."
  value       = google_sql_database_instance.postgres.connection_name
}

output "instance_name" {
  description = "Cloud SQL instance name."
  value       = google_sql_database_instance.postgres.name
}

output "database_url" {
  description = "DATABASE_URL of the schema owner, for the migrate job only: the Unix socket Cloud Run mounts at /cloudsql/<connection name>."
  value       = "postgresql+psycopg://${google_sql_user.app.name}:${urlencode(random_password.app.result)}@/${google_sql_database.plant.name}?host=/cloudsql/${google_sql_database_instance.postgres.connection_name}"
  sensitive   = true
}

output "runtime_database_url" {
  description = "DATABASE_URL of the runtime role, for the API, the workers and the seal-keys job: same socket and database as database_url."
  value       = "postgresql+psycopg://${var.runtime_user_name}:${urlencode(random_password.runtime.result)}@/${google_sql_database.plant.name}?host=/cloudsql/${google_sql_database_instance.postgres.connection_name}"
  sensitive   = true
}

output "runtime_user_name" {
  description = "The runtime role's name, PLANT_RUNTIME_ROLE of the migrate job."
  value       = var.runtime_user_name
}

output "runtime_password" {
  description = "The runtime role's password, PLANT_RUNTIME_ROLE_PASSWORD of the migrate job, which sets it on the role."
  value       = random_password.runtime.result
  sensitive   = true
}
