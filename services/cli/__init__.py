"""The `forge` command line.

gRPC's fork handlers are turned off in the CLI's own process before gRPC loads: `forge up` starts
each service with a real fork (its preexec step), and with a health check in flight gRPC core
then logs "skipping fork() handlers" on the console. The child execs at once and never uses the
parent's gRPC state. Services get the caller's own setting back (`child_env`)."""

import os

FORK_SUPPORT_ENV = "GRPC_ENABLE_FORK_SUPPORT"
CALLERS_FORK_SUPPORT = os.environ.get(FORK_SUPPORT_ENV)
os.environ.setdefault(FORK_SUPPORT_ENV, "false")
