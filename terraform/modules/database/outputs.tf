output "connection_name" {
  description = "PROJECT:REGION:INSTANCE, what Cloud Run's cloud_sql_instance volume mounts."
  value       = google_sql_database_instance.postgres.connection_name
}

output "instance_name" {
  description = "Cloud SQL instance name."
  value       = google_sql_database_instance.postgres.name
}

output "database_url" {
  description = "DATABASE_URL for Plant: the Unix socket Cloud Run mounts at /cloudsql/<connection name>."
  value       = "postgresql+psycopg://${google_sql_user.app.name}:${urlencode(random_password.app.result)}@/${google_sql_database.plant.name}?host=/cloudsql/${google_sql_database_instance.postgres.connection_name}"
  sensitive   = true
}
