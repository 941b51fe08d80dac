"""Process-wide test settings, read before any test module imports grpc."""

import os

# The tests' grpcio clients share the process with servers that fork and exec (the embedded
# PostgreSQL's pg_ctl when it is restarted). grpcio's fork support runs its handlers in such a
# child, which then can abort inside the C core (ev_epoll1 "next_worker->state == KICKED") before
# it reaches exec. Nothing here uses gRPC across a fork, so the handlers are turned off.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
