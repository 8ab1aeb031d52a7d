# The function's role: read and delete on its own queue, write to its own log group, read its one
# secret (and decrypt it when a customer key encrypts it), and in a VPC the network interfaces
# Lambda needs there. Nothing else.

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "function" {
  name               = "${var.name}-function"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "function" {
  statement {
    sid       = "ConsumeQueue"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"]
    resources = [aws_sqs_queue.samples.arn]
  }

  statement {
    sid       = "WriteLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.function.arn}:*"]
  }

  statement {
    sid       = "ReadDatabaseSecret"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [var.postgres_secret_arn]
  }

  dynamic "statement" {
    for_each = var.postgres_secret_kms_key_arn == null ? [] : [var.postgres_secret_kms_key_arn]
    content {
      sid       = "DecryptDatabaseSecret"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["secretsmanager.${data.aws_region.current.name}.amazonaws.com"]
      }
    }
  }

  dynamic "statement" {
    for_each = local.vpc ? [1] : []
    content {
      sid = "VpcNetworkInterfaces"
      # EC2 does not scope these to a resource; the function's subnets and groups bound what they reach.
      actions = [
        "ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DeleteNetworkInterface",
        "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses",
      ]
      resources = ["*"]
    }
  }
}

data "aws_region" "current" {}

resource "aws_iam_role_policy" "function" {
  name   = "${var.name}-function"
  role   = aws_iam_role.function.id
  policy = data.aws_iam_policy_document.function.json
}

# For whatever runs `sysmon export sqs` (an instance profile, a pod's role): send to this queue only
# (SendMessageBatch is authorised as sqs:SendMessage).
data "aws_iam_policy_document" "exporter" {
  statement {
    sid       = "SendSamples"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.samples.arn]
  }
}
