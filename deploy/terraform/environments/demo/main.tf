provider "aws" {
  region = var.region
  default_tags {
    tags = {
      project     = "sysmon"
      environment = "demo"
    }
  }
}

module "demo" {
  source = "../../modules/demo"

  name                     = var.name
  subnet_id                = var.subnet_id
  instance_type            = var.instance_type
  image                    = var.image
  ssh_cidrs                = var.ssh_cidrs
  ssh_key_name             = var.ssh_key_name
  enable_remote_collectors = var.enable_remote_collectors
  collector_cidrs          = var.collector_cidrs
  domain_name              = var.domain_name
  route53_zone_id          = var.route53_zone_id
  acme_email               = var.acme_email
  token_parameter          = var.token_parameter
  db_password_parameter    = var.db_password_parameter
}

# The Lambda pipeline (sysmon/pipeline: the bus's samples through SQS to a Lambda handler) is the
# module deploy/terraform/modules/pipeline (README "The Lambda pipeline"). It is not on by default
# here: its handler writes to a PostgreSQL it can reach from the Lambda's subnets (e.g. RDS), named
# by a Secrets Manager secret, and the demo's database lives inside the instance. To add it:
#
# module "pipeline" {
#   source              = "../../modules/pipeline"
#   name                = "${var.name}-pipeline"
#   lambda_zip          = "../../../../build/sysmon-pipeline-lambda.zip" # make lambda
#   postgres_secret_arn = "arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME"
#   subnet_ids          = ["subnet-..."]
#   security_group_ids  = ["sg-..."]
# }
