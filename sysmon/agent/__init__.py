"""The collector: sampling, batching, the unacked buffer, the three client streams."""
