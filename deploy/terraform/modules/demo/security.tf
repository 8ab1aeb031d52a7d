resource "aws_security_group" "this" {
  name_prefix = "${var.name}-"
  description = "sysmon demo: HTTPS (and HTTP for ACME and the redirect), SSH from chosen networks, gRPC for remote collectors when enabled"
  vpc_id      = data.aws_subnet.this.vpc_id
  tags        = local.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "https" {
  # checkov:skip=CKV_AWS_260: a public demo: the dashboard is served to anyone who has the token
  security_group_id = aws_security_group.this.id
  description       = "HTTPS: Caddy in front of the gateway"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "http" {
  # checkov:skip=CKV_AWS_260: Let's Encrypt's HTTP-01 challenge comes from anywhere; Caddy redirects everything else to HTTPS
  security_group_id = aws_security_group.this.id
  description       = "HTTP: ACME challenges and the redirect to HTTPS"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "ssh" {
  for_each          = toset(var.ssh_cidrs)
  security_group_id = aws_security_group.this.id
  description       = "SSH from ${each.value}"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "grpc" {
  for_each          = var.enable_remote_collectors ? toset(var.collector_cidrs) : toset([])
  security_group_id = aws_security_group.this.id
  description       = "collectors from ${each.value}: gRPC over TLS, token required"
  ip_protocol       = "tcp"
  from_port         = var.grpc_port
  to_port           = var.grpc_port
  cidr_ipv4         = each.value
}

# Out: package mirrors (HTTP), the image registry, Let's Encrypt, SSM and webhooks (HTTPS).
# DNS, NTP and instance metadata go to link-local services that security groups do not filter.
resource "aws_vpc_security_group_egress_rule" "web" {
  for_each          = toset(["80", "443"])
  security_group_id = aws_security_group.this.id
  description       = "out to port ${each.value}"
  ip_protocol       = "tcp"
  from_port         = tonumber(each.value)
  to_port           = tonumber(each.value)
  cidr_ipv4         = "0.0.0.0/0"
}
