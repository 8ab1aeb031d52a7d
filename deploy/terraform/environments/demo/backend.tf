# Remote state in S3, locked with S3's own lock file (Terraform 1.10+; no DynamoDB table needed).
# Partial configuration: the bucket and key come from a file of yours, never committed here:
#
#   cp backend.hcl.example backend.hcl     # then edit the bucket, key and region
#   terraform init -backend-config=backend.hcl
#
# The bucket should have versioning on, public access blocked and default encryption; the state
# holds no secret of the stack (the token and password stay in SSM), but it does hold addresses.
terraform {
  backend "s3" {}
}
