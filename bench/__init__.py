"""`make bench`: roz's one port measured against grpcio's own server and a hand-written endpoint.

`python -m bench` starts the servers in a subprocess (bench/servers.py), checks that every side
answers the same thing correctly, then loads each side in turn — h2load for gRPC, wrk for
HTTP/1.1, or the asyncio load generator in bench/pyload.py where they are missing — and prints
the ratios with the machine they ran on. Settings come from the environment: BENCH_SECONDS,
BENCH_WARMUP_SECONDS, BENCH_ROUNDS, BENCH_GRPC_CONNECTIONS, BENCH_GRPC_STREAMS,
BENCH_HTTP1_CONNECTIONS, BENCH_LOAD (tools|python).
"""
