variable "name" {
  type        = string
  description = "Name of the pipeline: the queue, its dead-letter queue (NAME-dlq), the function, its role and log group."
  default     = "sysmon-pipeline"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,60}$", var.name))
    error_message = "name must be 1-60 characters of letters, digits, - and _ (SQS and Lambda names)."
  }
}

variable "lambda_zip" {
  type        = string
  description = "Path of the deployment zip that `make lambda` builds (build/sysmon-pipeline-lambda.zip)."
}

variable "runtime" {
  type        = string
  description = "Lambda Python runtime; must match the --python the zip was built for (make lambda ARGS=\"--python 3.12\")."
  default     = "python3.12"

  validation {
    condition     = contains(["python3.11", "python3.12", "python3.13"], var.runtime)
    error_message = "runtime must be python3.11, python3.12 or python3.13."
  }
}

variable "architecture" {
  type        = string
  description = "Lambda architecture; must match the zip's wheels (make lambda ARGS=\"--arch arm64\")."
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be x86_64 or arm64."
  }
}

variable "memory_size" {
  type        = number
  description = "Function memory in MB (CPU grows with it); BENCHMARKS.md has the handler's use per batch."
  default     = 256

  validation {
    condition     = var.memory_size >= 128 && var.memory_size <= 10240
    error_message = "memory_size must be between 128 and 10240 MB."
  }
}

variable "timeout_seconds" {
  type        = number
  description = "Function timeout in seconds; the queue's visibility timeout is six times this, as AWS advises."
  default     = 60

  validation {
    condition     = var.timeout_seconds >= 3 && var.timeout_seconds <= 900
    error_message = "timeout_seconds must be between 3 and 900."
  }
}

variable "batch_size" {
  type        = number
  description = "SQS messages per invocation (each message holds many collector batches)."
  default     = 10

  validation {
    condition     = var.batch_size >= 1 && var.batch_size <= 10000
    error_message = "batch_size must be between 1 and 10000."
  }
}

variable "batching_window_seconds" {
  type        = number
  description = "How long the event source mapping gathers messages before invoking with fewer than batch_size (0-300)."
  default     = 5

  validation {
    condition     = var.batching_window_seconds >= 0 && var.batching_window_seconds <= 300
    error_message = "batching_window_seconds must be between 0 and 300."
  }
}

variable "maximum_concurrency" {
  type        = number
  description = "Most concurrent invocations the event source mapping starts (2-1000): bounds PostgreSQL connections."
  default     = 5

  validation {
    condition     = var.maximum_concurrency >= 2 && var.maximum_concurrency <= 1000
    error_message = "maximum_concurrency must be between 2 and 1000."
  }
}

variable "max_receive_count" {
  type        = number
  description = "Receives of a message that failed before SQS moves it to the dead-letter queue."
  default     = 5

  validation {
    condition     = var.max_receive_count >= 1 && var.max_receive_count <= 1000
    error_message = "max_receive_count must be between 1 and 1000."
  }
}

variable "message_retention_seconds" {
  type        = number
  description = "How long the queue keeps a message not yet handled (60 s - 14 days)."
  default     = 345600

  validation {
    condition     = var.message_retention_seconds >= 60 && var.message_retention_seconds <= 1209600
    error_message = "message_retention_seconds must be between 60 and 1209600."
  }
}

variable "dlq_retention_seconds" {
  type        = number
  description = "How long the dead-letter queue keeps a message, for reading and redriving (60 s - 14 days)."
  default     = 1209600

  validation {
    condition     = var.dlq_retention_seconds >= 60 && var.dlq_retention_seconds <= 1209600
    error_message = "dlq_retention_seconds must be between 60 and 1209600."
  }
}

variable "log_kms_key_arn" {
  type        = string
  default     = null
  description = "ARN of a KMS key to encrypt the function's log group with (null: CloudWatch Logs' own encryption). The key policy must allow the logs service."
}

variable "log_retention_days" {
  type        = number
  description = "Retention of the function's CloudWatch log group, in days."
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of the values CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, ...)."
  }
}

variable "postgres_secret_arn" {
  type        = string
  description = "ARN of the Secrets Manager secret with the PostgreSQL credentials, in the shape RDS writes (username, password, host, port, dbname)."

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:secretsmanager:", var.postgres_secret_arn))
    error_message = "postgres_secret_arn must be a Secrets Manager secret ARN."
  }
}

variable "postgres_secret_kms_key_arn" {
  type        = string
  description = "ARN of the customer-managed KMS key that encrypts the secret, if any (null: the AWS-managed key, no grant needed)."
  default     = null
}

variable "postgres_sslmode" {
  type        = string
  description = "libpq sslmode of the function's PostgreSQL connection."
  default     = "require"

  validation {
    condition     = contains(["require", "verify-ca", "verify-full"], var.postgres_sslmode)
    error_message = "postgres_sslmode must be require, verify-ca or verify-full: credentials never cross the network in clear."
  }
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets for the function when PostgreSQL is inside a VPC (empty: no VPC)."
  default     = []
}

variable "security_group_ids" {
  type        = list(string)
  description = "Security groups of the function in the VPC (with subnet_ids); PostgreSQL must admit them."
  default     = []
}

variable "dlq_alarm_actions" {
  type        = list(string)
  description = "ARNs (SNS topics) told when the dead-letter queue holds messages, and again when it is empty."
  default     = []
}

variable "tags" {
  type        = map(string)
  description = "Tags for every resource of the module."
  default     = {}
}
