variable "name" {
  type        = string
  description = "Name of the demo: prefix of every resource's Name tag, IAM role and security group."
  default     = "sysmon-demo"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name: 2-31 characters, lower-case letters, digits and '-', starting with a letter."
  }
}

variable "subnet_id" {
  type        = string
  description = "Public subnet (a route to an internet gateway) the instance runs in; its VPC and availability zone are taken from it."
}

variable "instance_type" {
  type        = string
  description = "EC2 instance type. The stack measured about 1 GiB resident under 10 hosts (BENCHMARKS.md), so 2 GiB (t2.small) is the smallest that fits."
  default     = "t2.small"
}

variable "ami_id" {
  type        = string
  description = "AMI to boot; null takes the current Ubuntu 24.04 LTS (amd64, gp3) from Canonical's public SSM parameter. cloud-init there installs Docker and the Compose plugin with apt."
  default     = null
}

variable "image" {
  type        = string
  description = "The sysmon image the stack runs, as pushed by .woodpecker/image.yaml, e.g. registry.example.com/acme/sysmon:0.1.0."
  validation {
    condition     = can(regex("^[^\\s]+[:@][^\\s]+$", var.image))
    error_message = "image: a reference with a tag or digest (registry/repository:tag or @sha256:...)."
  }
}

variable "ssh_cidrs" {
  type        = list(string)
  description = "CIDR blocks allowed to reach SSH (22); empty closes SSH (use SSM Session Manager instead)."
  default     = []
  validation {
    condition     = alltrue([for c in var.ssh_cidrs : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "ssh_cidrs: valid CIDR blocks, and not 0.0.0.0/0."
  }
}

variable "ssh_key_name" {
  type        = string
  description = "Name of an existing EC2 key pair for SSH; null for none."
  default     = null
}

variable "enable_remote_collectors" {
  type        = bool
  description = "Open gRPC for collectors on other machines: TLS (the same certificate as HTTPS, terminated by Caddy) on grpc_port, and the aggregator's token required."
  default     = false
}

variable "collector_cidrs" {
  type        = list(string)
  description = "CIDR blocks of remote collectors allowed to reach grpc_port; used only with enable_remote_collectors."
  default     = []
  validation {
    condition     = alltrue([for c in var.collector_cidrs : can(cidrhost(c, 0))])
    error_message = "collector_cidrs: valid CIDR blocks."
  }
}

variable "grpc_port" {
  type        = number
  description = "Public port of the aggregator's gRPC over TLS (Caddy forwards it to the aggregator as h2c)."
  default     = 50443
  validation {
    condition     = var.grpc_port > 1023 && var.grpc_port < 65536 && var.grpc_port != 50051
    error_message = "grpc_port: 1024-65535, not 50051 (the aggregator's own port on the instance's loopback)."
  }
}

variable "domain_name" {
  type        = string
  description = "Host name of the demo (e.g. demo.example.com), certified by Let's Encrypt through Caddy; null serves the Elastic IP with Caddy's internal CA (browsers warn)."
  default     = null
}

variable "route53_zone_id" {
  type        = string
  description = "Route 53 hosted zone in which to create an A record for domain_name; null to manage DNS elsewhere."
  default     = null
}

variable "acme_email" {
  type        = string
  description = "Contact address for Let's Encrypt; required with domain_name."
  default     = null
}

variable "token_parameter" {
  type        = string
  description = "Name of the SSM Parameter Store SecureString holding the fleet token (SYSMON_TOKEN), read at every boot through the instance role."
  default     = "/sysmon/demo/token"
}

variable "db_password_parameter" {
  type        = string
  description = "Name of the SSM Parameter Store SecureString holding the database password (SYSMON_DB_PASSWORD), read at every boot."
  default     = "/sysmon/demo/db-password"
}

variable "ssm_kms_key_arn" {
  type        = string
  description = "Customer managed KMS key the two SecureStrings are encrypted with; null for the account's aws/ssm key."
  default     = null
}

variable "ebs_kms_key_arn" {
  type        = string
  description = "Customer managed KMS key for the root and data volumes; null for the account's aws/ebs key (both are encrypted either way)."
  default     = null
}

variable "root_volume_size" {
  type        = number
  description = "Root volume (gp3, encrypted) in GiB: the OS and Docker's images."
  default     = 16
}

variable "data_volume_size" {
  type        = number
  description = "Data volume (gp3, encrypted) in GiB: PostgreSQL, Redis and Caddy's certificates. It outlives the instance, so a replaced instance keeps the history."
  default     = 20
}

variable "compose_file" {
  type        = string
  description = "Path of the docker-compose.yml to run; null takes the repository's (its demo profile adds Caddy)."
  default     = null
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}
