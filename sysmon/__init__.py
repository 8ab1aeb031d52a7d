"""sysmon: Kubernetes-native system monitoring."""

import os

# gRPC's fork handlers make a child forked while gRPC threads run (subprocess with a user
# switch, as embedded PostgreSQL's pg_ctl is run) crash with SIGSEGV; sysmon never uses gRPC
# in a forked child, so the handlers are switched off before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
