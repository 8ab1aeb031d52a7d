"""PromQL over sysmon's storage: the name mapping (names.py), the evaluator (engine.py) and the
series and samples it reads (source.py). The gateway's Prometheus HTTP API serves it."""
