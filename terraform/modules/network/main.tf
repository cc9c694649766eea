# The VPC Plant runs in: one regional subnet that Cloud Run's Direct VPC egress takes its
# addresses from, and Private Service Access (a peering to Google's service producer
# network) through which Cloud SQL and Memorystore get private IPs in an allocated range.

resource "google_compute_network" "vpc" {
  project                 = var.project_id
  name                    = "${var.name}-vpc"
  auto_create_subnetworks = false
  routing_mode            = "REGIONAL"
}

resource "google_compute_subnetwork" "run" {
  project       = var.project_id
  name          = "${var.name}-run-${var.region}"
  region        = var.region
  network       = google_compute_network.vpc.id
  ip_cidr_range = var.subnet_cidr
  # Instances without public IPs (Cloud Run egress) still reach Google APIs.
  private_ip_google_access = true

  log_config {
    aggregation_interval = "INTERVAL_10_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# Nothing in this VPC accepts connections: Cloud Run only sends (Direct VPC egress) and the
# replies are allowed statefully. GCP's implied rule already denies ingress; this one makes
# the policy explicit and logs what it drops.
resource "google_compute_firewall" "deny_all_ingress" {
  project       = var.project_id
  name          = "${var.name}-deny-all-ingress"
  network       = google_compute_network.vpc.id
  direction     = "INGRESS"
  priority      = 65534
  source_ranges = ["0.0.0.0/0"]

  deny {
    protocol = "all"
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

# The range Google's managed services (Cloud SQL, Memorystore) draw private IPs from. It is
# set explicitly so it can never collide with the subnet above.
resource "google_compute_global_address" "private_service_access" {
  project       = var.project_id
  name          = "${var.name}-psa"
  purpose       = "VPC_PEERING"
  address_type  = "INTERNAL"
  address       = split("/", var.private_service_access_cidr)[0]
  prefix_length = tonumber(split("/", var.private_service_access_cidr)[1])
  network       = google_compute_network.vpc.id
}

resource "google_service_networking_connection" "private_service_access" {
  network                 = google_compute_network.vpc.id
  service                 = "servicenetworking.googleapis.com"
  reserved_peering_ranges = [google_compute_global_address.private_service_access.name]
  # Deleting the peering fails while Cloud SQL still holds addresses in it; on destroy,
  # abandon it and let the network's deletion take it away.
  deletion_policy = "ABANDON"
}
