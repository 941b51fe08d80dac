"""Entry point of `python -m bench` (what `make bench` runs)."""

import os
import sys

# grpcio's fork handlers warn on every load tool the bench starts; nothing forked uses gRPC.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from bench.run import main

sys.exit(main())
