# One EC2 instance running the Docker Compose stack (docker-compose.yml, profile "demo": Caddy in
# front of the gateway), its data on a volume of its own that outlives the instance.

data "aws_subnet" "this" {
  id = var.subnet_id
}

data "aws_region" "current" {}

data "aws_ssm_parameter" "ubuntu" {
  count = var.ami_id == null ? 1 : 0
  name  = "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"
}

locals {
  tags         = merge({ Name = var.name, "app.kubernetes.io/part-of" = "sysmon" }, var.tags)
  ami_id       = var.ami_id != null ? var.ami_id : nonsensitive(data.aws_ssm_parameter.ubuntu[0].value)
  compose_file = var.compose_file != null ? var.compose_file : "${path.module}/../../../../docker-compose.yml"
  host         = var.domain_name != null ? var.domain_name : aws_eip.this.public_ip
  url          = "https://${local.host}/"
  # Not secret: what the stack needs besides the two SecureStrings (which the boot script adds).
  settings = {
    SYSMON_IMAGE          = var.image
    SYSMON_DEMO_HOST      = local.host
    SYSMON_DEMO_TLS       = var.domain_name != null ? var.acme_email : "internal"
    SYSMON_DEMO_GRPC_PORT = tostring(var.grpc_port)
    COMPOSE_PROFILES      = "demo"
  }
  user_data = templatefile("${path.module}/cloud-init.yaml.tftpl", {
    region         = data.aws_region.current.name
    compose_b64    = filebase64(local.compose_file)
    settings_b64   = base64encode(join("", [for k, v in local.settings : "${k}=${v}\n"]))
    token_param    = var.token_parameter
    db_param       = var.db_password_parameter
    data_volume_id = replace(aws_ebs_volume.data.id, "-", "")
  })
}

resource "aws_instance" "this" {
  ami                    = local.ami_id
  instance_type          = var.instance_type
  subnet_id              = var.subnet_id
  vpc_security_group_ids = [aws_security_group.this.id]
  iam_instance_profile   = aws_iam_instance_profile.this.name
  key_name               = var.ssh_key_name
  # Compressed: the compose file and the scripts stay well under user data's 16 KiB. No secret in it.
  user_data_base64            = base64gzip(local.user_data)
  user_data_replace_on_change = true
  monitoring                  = true

  # checkov:skip=CKV_AWS_135: t2 instances cannot be EBS-optimized; the demo's disk load is a few writes a second
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 1          # the host's aws CLI reads it; containers cannot
    instance_metadata_tags      = "disabled"
  }

  root_block_device {
    volume_type           = "gp3"
    volume_size           = var.root_volume_size
    encrypted             = true
    kms_key_id            = var.ebs_kms_key_arn
    delete_on_termination = true
  }

  credit_specification {
    cpu_credits = "standard"
  }

  tags        = local.tags
  volume_tags = local.tags

  lifecycle {
    # A newer Ubuntu image replaces the instance only when asked (terraform apply -replace=...).
    ignore_changes = [ami]
  }
}

# The database lives here (Docker's data root), so that a replaced instance keeps the history.
resource "aws_ebs_volume" "data" {
  availability_zone = data.aws_subnet.this.availability_zone
  type              = "gp3"
  size              = var.data_volume_size
  encrypted         = true
  kms_key_id        = var.ebs_kms_key_arn
  tags              = merge(local.tags, { Name = "${var.name}-data" })

  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_volume_attachment" "data" {
  device_name = "/dev/sdf"
  volume_id   = aws_ebs_volume.data.id
  instance_id = aws_instance.this.id
  # Stop the instance's services before detaching, so PostgreSQL shuts down cleanly.
  stop_instance_before_detaching = true
}

# The address is allocated before the instance, so that the user data can name it (Caddy's site).
resource "aws_eip" "this" {
  domain = "vpc"
  tags   = local.tags
}

resource "aws_eip_association" "this" {
  allocation_id = aws_eip.this.id
  instance_id   = aws_instance.this.id
}

resource "aws_route53_record" "this" {
  count   = var.route53_zone_id != null && var.domain_name != null ? 1 : 0
  zone_id = var.route53_zone_id
  name    = var.domain_name
  type    = "A"
  ttl     = 300
  records = [aws_eip.this.public_ip]
}

check "acme_email_with_domain" {
  assert {
    condition     = var.domain_name == null || var.acme_email != null
    error_message = "domain_name is set: set acme_email too (Let's Encrypt's contact for the certificate)."
  }
}

check "collectors_need_sources" {
  assert {
    condition     = !var.enable_remote_collectors || length(var.collector_cidrs) > 0
    error_message = "enable_remote_collectors is on but collector_cidrs is empty: no collector could connect."
  }
}
