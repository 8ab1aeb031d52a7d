"""PostgreSQL storage: the schema and its migrations, the batch writer, rollups, retention, queries."""
