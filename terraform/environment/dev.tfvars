# Example values for a dev environment. No secrets belong here: every secret is generated
# into Secret Manager. Pass the image per deploy: -var image_tag=$(git rev-parse --short=12 HEAD)

project_id  = "your-plant-dev-project"
region      = "europe-west1"
environment = "dev"

# A dev environment should be easy to tear down.
deletion_protection = false

database_version            = "POSTGRES_17"
database_edition            = "ENTERPRISE"
database_tier               = "db-custom-1-3840"
database_availability_type  = "ZONAL"
database_disk_size_gb       = 10
database_retained_backups   = 3
database_log_retention_days = 3
# On top of the database module's logging baseline (modules/database/main.tf).
database_flags = {
  max_connections = "100"
}

redis_tier           = "BASIC"
redis_memory_size_gb = 1

api_min_instances      = 0
api_max_instances      = 2
api_web_concurrency    = 2
worker_instances       = 1
worker_audit_instances = 1
worker_concurrency     = 2

flower_enabled = true
# Who may open the API and Flower (Cloud Run IAM), e.g. ["group:plant-dev@example.com"].
api_invokers    = []
flower_invokers = []
