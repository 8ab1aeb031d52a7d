output "url" {
  description = "The dashboard (HTTPS through Caddy); the API and the dashboard want the fleet token."
  value       = local.url
}

output "public_ip" {
  description = "The Elastic IP of the instance (stays when the instance is replaced)."
  value       = aws_eip.this.public_ip
}

output "instance_id" {
  description = "The EC2 instance; `aws ssm start-session --target <id>` opens a shell without SSH."
  value       = aws_instance.this.id
}

output "data_volume_id" {
  description = "The encrypted data volume holding PostgreSQL, Redis and Caddy's certificates (prevent_destroy)."
  value       = aws_ebs_volume.data.id
}

output "security_group_id" {
  description = "The instance's security group, for rules added outside this module."
  value       = aws_security_group.this.id
}

output "collector" {
  description = "How to connect a collector on another machine (with enable_remote_collectors), the token read from SSM."
  value = var.enable_remote_collectors ? join(" ", [
    "SYSMON_AGGREGATOR=${local.host}:${var.grpc_port}",
    var.domain_name != null ? "SYSMON_TLS=true" : "SYSMON_TLS_CA=<Caddy's root: /var/lib/sysmon/docker/volumes/sysmon_caddy-data/_data/caddy/pki/authorities/local/root.crt>",
    "SYSMON_TOKEN=$(aws ssm get-parameter --with-decryption --name ${var.token_parameter} --query Parameter.Value --output text)",
    "sysmon agent",
  ]) : "remote collectors are off (enable_remote_collectors = false); the instance's own collector reports it"
}
