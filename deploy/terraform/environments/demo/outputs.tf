output "url" {
  description = "The dashboard; paste the token (from SSM) when it asks."
  value       = module.demo.url
}

output "public_ip" {
  description = "The demo's Elastic IP."
  value       = module.demo.public_ip
}

output "instance_id" {
  description = "The instance, for `aws ssm start-session --target`."
  value       = module.demo.instance_id
}

output "data_volume_id" {
  description = "The volume holding the history; it outlives the instance."
  value       = module.demo.data_volume_id
}

output "collector" {
  description = "The environment and command that connect a collector on another machine."
  value       = module.demo.collector
}
