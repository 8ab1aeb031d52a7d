"""The aggregator: gRPC services, normalization, the writers, rollups and retention."""
