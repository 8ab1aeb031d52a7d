output "queue_url" {
  description = "URL of the samples queue: `sysmon export sqs --queue-url` takes it."
  value       = aws_sqs_queue.samples.id
}

output "queue_arn" {
  description = "ARN of the samples queue."
  value       = aws_sqs_queue.samples.arn
}

output "dlq_url" {
  description = "URL of the dead-letter queue, where records the function could not handle wait to be read or redriven."
  value       = aws_sqs_queue.dlq.id
}

output "dlq_arn" {
  description = "ARN of the dead-letter queue."
  value       = aws_sqs_queue.dlq.arn
}

output "function_name" {
  description = "Name of the Lambda function."
  value       = aws_lambda_function.pipeline.function_name
}

output "function_arn" {
  description = "ARN of the Lambda function."
  value       = aws_lambda_function.pipeline.arn
}

output "role_arn" {
  description = "ARN of the function's execution role."
  value       = aws_iam_role.function.arn
}

output "log_group_name" {
  description = "CloudWatch log group of the function (JSON lines from Powertools' logger and EMF metrics)."
  value       = aws_cloudwatch_log_group.function.name
}

output "dlq_alarm_arn" {
  description = "ARN of the alarm on the dead-letter queue's depth."
  value       = aws_cloudwatch_metric_alarm.dlq_depth.arn
}

output "exporter_policy_json" {
  description = "IAM policy (JSON) for the identity that runs `sysmon export sqs`: SendMessage on this queue only."
  value       = data.aws_iam_policy_document.exporter.json
}
