variable "region" {
  type        = string
  description = "AWS region of the demo."
}

variable "name" {
  type        = string
  description = "Name of the demo, prefix of its resources."
  default     = "sysmon-demo"
}

variable "subnet_id" {
  type        = string
  description = "Public subnet the instance runs in (the default VPC's subnets are public)."
}

variable "instance_type" {
  type        = string
  description = "EC2 instance type; t2.small (2 GiB) fits the stack (BENCHMARKS.md)."
  default     = "t2.small"
}

variable "image" {
  type        = string
  description = "The sysmon image to run, as .woodpecker/image.yaml pushed it (registry/repository:tag)."
}

variable "ssh_cidrs" {
  type        = list(string)
  description = "CIDR blocks allowed to SSH in; empty keeps SSH closed (SSM Session Manager works regardless)."
  default     = []
}

variable "ssh_key_name" {
  type        = string
  description = "Existing EC2 key pair for SSH, or null."
  default     = null
}

variable "enable_remote_collectors" {
  type        = bool
  description = "Accept collectors from other machines (gRPC over TLS, token required)."
  default     = false
}

variable "collector_cidrs" {
  type        = list(string)
  description = "CIDR blocks remote collectors connect from."
  default     = []
}

variable "domain_name" {
  type        = string
  description = "The demo's host name (Let's Encrypt certificate); null serves the Elastic IP with Caddy's internal CA."
  default     = null
}

variable "route53_zone_id" {
  type        = string
  description = "Route 53 zone for domain_name's A record; null when DNS is managed elsewhere."
  default     = null
}

variable "acme_email" {
  type        = string
  description = "Let's Encrypt contact address, required with domain_name."
  default     = null
}

variable "token_parameter" {
  type        = string
  description = "SSM SecureString holding SYSMON_TOKEN."
  default     = "/sysmon/demo/token"
}

variable "db_password_parameter" {
  type        = string
  description = "SSM SecureString holding the database password."
  default     = "/sysmon/demo/db-password"
}
