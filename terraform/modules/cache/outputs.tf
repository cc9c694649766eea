output "host" {
  description = "Private IP of the instance."
  value       = google_redis_instance.broker.host
}

output "port" {
  description = "Port of the instance."
  value       = google_redis_instance.broker.port
}

output "redis_url" {
  description = "REDIS_URL for Plant, with the AUTH string."
  value       = "redis://:${urlencode(google_redis_instance.broker.auth_string)}@${google_redis_instance.broker.host}:${google_redis_instance.broker.port}/0"
  sensitive   = true
}
