"""The AWS pipeline: the SQS exporter (bus -> SQS) and the Lambda handler (SQS -> rollups in PostgreSQL).

The Lambda package holds sysmon.core, sysmon.pb and this package, with only the handler's own
dependencies (protobuf, asyncpg, aws-lambda-powertools): modules here that the handler imports
import nothing else (tests/unit/test_pipeline_package.py checks it).
"""
