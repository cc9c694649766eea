output "network_id" {
  description = "VPC id. Depends on the Private Service Access peering, so anything given a private IP through it (Cloud SQL, Memorystore) waits for the peering."
  value       = google_compute_network.vpc.id
  depends_on  = [google_service_networking_connection.private_service_access]
}

output "subnet_id" {
  description = "Subnet for Cloud Run Direct VPC egress."
  value       = google_compute_subnetwork.run.id
}

output "private_service_access_range" {
  description = "Name of the allocated range that managed services take their IPs from."
  value       = google_compute_global_address.private_service_access.name
}
