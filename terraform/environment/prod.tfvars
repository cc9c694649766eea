# Example values for production. No secrets belong here: every secret is generated into
# Secret Manager. Pass the image per deploy: -var image_tag=$(git rev-parse --short=12 HEAD)

project_id  = "your-plant-prod-project"
region      = "europe-west1"
environment = "prod"

deletion_protection = true

database_version            = "POSTGRES_17"
database_edition            = "ENTERPRISE"
database_tier               = "db-custom-2-7680"
database_availability_type  = "REGIONAL"
database_disk_size_gb       = 50
database_retained_backups   = 30
database_log_retention_days = 7
# On top of the database module's logging baseline (modules/database/main.tf).
# Connections (docs/deploy.md, "Scaling"): API 8 x 2 x (8 x 2 + 2) = 288, workers
# (2 x 2 + 1) x (2 + 5) = 35; 323 under 400.
database_flags = {
  max_connections = "400"
}

redis_tier           = "STANDARD_HA"
redis_memory_size_gb = 2

api_min_instances      = 1
api_max_instances      = 8
api_web_concurrency    = 2
worker_instances       = 2
worker_audit_instances = 1
worker_concurrency     = 2

flower_enabled  = true
api_invokers    = []
flower_invokers = []
