# Memorystore for Redis: Celery's broker. It gets its private IP through the VPC's Private
# Service Access range and is reached from Cloud Run over Direct VPC egress.

resource "google_redis_instance" "broker" {
  project            = var.project_id
  name               = var.name
  region             = var.region
  tier               = var.tier
  memory_size_gb     = var.memory_size_gb
  redis_version      = var.redis_version
  authorized_network = var.authorized_network
  connect_mode       = "PRIVATE_SERVICE_ACCESS"
  reserved_ip_range  = var.reserved_ip_range
  # AUTH on: the generated string goes into REDIS_URL (Secret Manager), never into config.
  auth_enabled = true
  #checkov:skip=CKV_GCP_97:In-transit TLS needs the instance's CA distributed to every Celery and redis-py client (rediss:// with ssl_ca_certs); traffic stays on the private VPC peering and is AUTH-protected. Revisit with a CA secret volume.
  transit_encryption_mode = "DISABLED"
  labels                  = var.labels

  redis_configs = {
    # A broker must refuse writes when full, never evict queued task messages.
    "maxmemory-policy" = "noeviction"
  }

  persistence_config {
    persistence_mode    = "RDB"
    rdb_snapshot_period = var.rdb_snapshot_period
  }

  maintenance_policy {
    weekly_maintenance_window {
      day = "SUNDAY"
      start_time {
        hours   = 3
        minutes = 0
      }
    }
  }
}
