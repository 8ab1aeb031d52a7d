# The Lambda pipeline: `sysmon export sqs` sends the samples topic to the queue; the function
# (sysmon.pipeline.lambda_handler.handler) stores per-host and fleet 1-minute rollups in PostgreSQL.
# A record it cannot handle is reported in batchItemFailures and, after max_receive_count
# receives, moved to the dead-letter queue, whose depth raises an alarm.

locals {
  vpc = length(var.subnet_ids) > 0
}

resource "aws_sqs_queue" "dlq" {
  name                      = "${var.name}-dlq"
  message_retention_seconds = var.dlq_retention_seconds
  sqs_managed_sse_enabled   = true
  tags                      = var.tags
}

resource "aws_sqs_queue" "samples" {
  name                       = var.name
  message_retention_seconds  = var.message_retention_seconds
  visibility_timeout_seconds = var.timeout_seconds * 6
  # The exporter's limit (sysmon.pipeline.wire.MAX_MESSAGE_BYTES)
  max_message_size          = 262144
  receive_wait_time_seconds = 20
  sqs_managed_sse_enabled   = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq.arn
    maxReceiveCount     = var.max_receive_count
  })
  tags = var.tags
}

# Only this queue may send its failures to the dead-letter queue.
resource "aws_sqs_queue_redrive_allow_policy" "dlq" {
  queue_url = aws_sqs_queue.dlq.id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.samples.arn]
  })
}

resource "aws_cloudwatch_log_group" "function" {
  # checkov:skip=CKV_AWS_158: encrypted at rest by CloudWatch Logs' own keys; log_kms_key_arn names a customer key where policy asks for one
  # checkov:skip=CKV_AWS_338: operational logs, not an audit trail: 30 days by default (log_retention_days)
  name              = "/aws/lambda/${var.name}"
  kms_key_id        = var.log_kms_key_arn
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

resource "aws_lambda_function" "pipeline" {
  # checkov:skip=CKV_AWS_116: SQS invokes it synchronously; failed records go back to the queue and its redrive policy moves them to the DLQ (a function DLQ serves asynchronous invocations only)
  # checkov:skip=CKV_AWS_115: concurrency is bounded by the event source mapping's maximum_concurrency (var.maximum_concurrency), not by reserving the account's pool
  # checkov:skip=CKV_AWS_272: code signing needs an AWS Signer profile of the user's; the zip is built reproducibly by make lambda
  # checkov:skip=CKV_AWS_173: the environment holds no secret (the secret's ARN and settings only), so the default AWS-managed key is enough
  function_name    = var.name
  description      = "sysmon: SQS samples -> per-host and fleet 1-minute rollups in PostgreSQL"
  role             = aws_iam_role.function.arn
  filename         = var.lambda_zip
  source_code_hash = filebase64sha256(var.lambda_zip)
  handler          = "sysmon.pipeline.lambda_handler.handler"
  runtime          = var.runtime
  architectures    = [var.architecture]
  memory_size      = var.memory_size
  timeout          = var.timeout_seconds

  environment {
    variables = {
      SYSMON_POSTGRES_SECRET       = var.postgres_secret_arn
      SYSMON_POSTGRES_SSLMODE      = var.postgres_sslmode
      POWERTOOLS_SERVICE_NAME      = var.name
      POWERTOOLS_METRICS_NAMESPACE = "sysmon"
    }
  }

  tracing_config {
    # Traces only when the caller's request is sampled; "Active" needs X-Ray write permissions.
    mode = "PassThrough"
  }

  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.function.name
  }

  dynamic "vpc_config" {
    for_each = local.vpc ? [1] : []
    content {
      subnet_ids         = var.subnet_ids
      security_group_ids = var.security_group_ids
    }
  }

  tags = var.tags

  # The log group (with its retention) exists before the function first writes to it.
  depends_on = [aws_cloudwatch_log_group.function, aws_iam_role_policy.function]
}

resource "aws_lambda_event_source_mapping" "samples" {
  event_source_arn                   = aws_sqs_queue.samples.arn
  function_name                      = aws_lambda_function.pipeline.arn
  batch_size                         = var.batch_size
  maximum_batching_window_in_seconds = var.batching_window_seconds
  # Only the records the handler names in batchItemFailures are delivered again.
  function_response_types = ["ReportBatchItemFailures"]

  scaling_config {
    maximum_concurrency = var.maximum_concurrency
  }
}

resource "aws_cloudwatch_metric_alarm" "dlq_depth" {
  alarm_name          = "${var.name}-dlq-not-empty"
  alarm_description   = "sysmon pipeline: messages the function could not handle are in ${aws_sqs_queue.dlq.name}; its log names each one's reason."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.dlq.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.dlq_alarm_actions
  ok_actions          = var.dlq_alarm_actions
  tags                = var.tags
}
