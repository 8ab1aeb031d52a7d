# terraform test (from modules/demo): the module planned against a mocked AWS provider,
# so that no account is needed. The checks: what is open by default, what each option opens.

mock_provider "aws" {
  # The mocked values already in the plan: the data volume has prevent_destroy, which an applied
  # test could not tear down.
  override_during = plan

  mock_data "aws_subnet" {
    defaults = { availability_zone = "eu-west-1a", vpc_id = "vpc-0123456789abcdef0" }
  }
  mock_data "aws_region" {
    defaults = { name = "eu-west-1" }
  }
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_ssm_parameter" {
    defaults = { value = "ami-0123456789abcdef0" }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  mock_resource "aws_eip" {
    defaults = { public_ip = "203.0.113.10" }
  }
  mock_resource "aws_ebs_volume" {
    defaults = { id = "vol-0123456789abcdef0" }
  }
  mock_resource "aws_iam_instance_profile" {
    defaults = { name = "sysmon-demo-profile" }
  }
}

variables {
  subnet_id = "subnet-0123456789abcdef0"
  image     = "registry.example.com/acme/sysmon:0.1.0"
}

run "by_default_only_http_and_https_are_open" {
  command = plan

  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.ssh) == 0 && length(aws_vpc_security_group_ingress_rule.grpc) == 0
    error_message = "SSH and gRPC must be closed unless asked for"
  }
  assert {
    condition     = aws_vpc_security_group_ingress_rule.https.from_port == 443 && aws_vpc_security_group_ingress_rule.http.from_port == 80
    error_message = "HTTPS and HTTP are the demo's public ports"
  }
  assert {
    condition     = aws_instance.this.instance_type == "t2.small"
    error_message = "the default instance is a t2.small"
  }
  assert {
    condition     = aws_instance.this.metadata_options[0].http_tokens == "required"
    error_message = "IMDSv2 must be required"
  }
  assert {
    condition     = aws_instance.this.root_block_device[0].encrypted && aws_instance.this.root_block_device[0].volume_type == "gp3"
    error_message = "the root volume is encrypted gp3"
  }
  assert {
    condition     = aws_ebs_volume.data.encrypted && aws_ebs_volume.data.type == "gp3" && aws_ebs_volume.data.availability_zone == "eu-west-1a"
    error_message = "the data volume is encrypted gp3, in the subnet's zone"
  }
  assert {
    condition     = length(aws_route53_record.this) == 0
    error_message = "no DNS record without a zone"
  }
  assert {
    condition     = output.url == "https://203.0.113.10/"
    error_message = "without a host name the demo is served on its Elastic IP"
  }
  assert {
    condition     = startswith(output.collector, "remote collectors are off")
    error_message = "the collector output says remote collectors are off"
  }
}

run "options_open_ssh_grpc_and_make_the_dns_record" {
  command = plan

  variables {
    ssh_cidrs                = ["198.51.100.7/32"]
    enable_remote_collectors = true
    collector_cidrs          = ["198.51.100.0/24", "192.0.2.0/24"]
    domain_name              = "demo.example.com"
    route53_zone_id          = "Z0123456789ABCDEFGHIJ"
    acme_email               = "ops@example.com"
  }

  assert {
    condition     = aws_vpc_security_group_ingress_rule.ssh["198.51.100.7/32"].from_port == 22
    error_message = "SSH is open to the given CIDR"
  }
  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.grpc) == 2 && aws_vpc_security_group_ingress_rule.grpc["192.0.2.0/24"].from_port == 50443
    error_message = "gRPC over TLS is open to each collector CIDR on 50443"
  }
  assert {
    condition     = aws_route53_record.this[0].name == "demo.example.com" && aws_route53_record.this[0].records == toset(["203.0.113.10"])
    error_message = "the A record points the host name at the Elastic IP"
  }
  assert {
    condition     = output.url == "https://demo.example.com/"
    error_message = "with a host name the URL uses it"
  }
  assert {
    condition     = strcontains(output.collector, "SYSMON_AGGREGATOR=demo.example.com:50443") && strcontains(output.collector, "SYSMON_TLS=true")
    error_message = "the collector output names the TLS endpoint"
  }
}

run "ssh_is_never_open_to_the_world" {
  command = plan

  variables {
    ssh_cidrs = ["0.0.0.0/0"]
  }
  expect_failures = [var.ssh_cidrs]
}
