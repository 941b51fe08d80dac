"""`make bench`: roz's one port measured against grpcio's own server and a hand-written endpoint,
then commands created and transitioned, and 100k tasks listed page by page.

`python -m bench` starts the servers in a subprocess (bench/servers.py), writes the bulk data
(bench/dataset.py), checks that every side answers the same thing correctly, then loads each
side in turn — h2load for gRPC, wrk for HTTP/1.1, or the asyncio load generator in
bench/pyload.py where they are missing — and prints the ratios with the machine they ran on;
CreateCommand and TransitionCommand (bench/commands.py) without a comparator; and ListTasks
walked from the first page to the last, its page time by depth against a goal (bench/tasks.py).
Settings come from the environment: BENCH_SECONDS (8), BENCH_WARMUP_SECONDS (2), BENCH_ROUNDS (3),
BENCH_GRPC_CONNECTIONS (8), BENCH_GRPC_STREAMS (16), BENCH_HTTP1_CONNECTIONS (32), BENCH_LOAD
(tools|python), BENCH_TASKS (100000, the tasks walked), BENCH_WALKS (1 timed walk per protocol).
Last, the robot link (bench/robots.py): BENCH_ROBOTS (10000 idle streams), BENCH_DISPATCH_SECONDS
(10), BENCH_STORM_ROBOTS (2000), BENCH_ESTOP_ROBOTS (1000, in one environment), BENCH_ROBOT_PHASES
(0 skips it; "estop,notify" say runs only those of idle, dispatch, storm, estop, notify).
After it, the watch fan-out (bench/watches.py): BENCH_WATCHERS (200) WatchHost streams of one
host while BENCH_WATCH_RATE (50) commands a second are created for it for BENCH_WATCH_SECONDS
(10), the watchers on the writing process and then on another; BENCH_WATCH=0 skips it.
Last, triggers (bench/triggers.py): BENCH_TRIGGER_COUNT (1000) schedule triggers due in the same
second across three processes, how late each fires; BENCH_WEBHOOKS (2000) signed webhook
deliveries, BENCH_WEBHOOK_CONCURRENCY (4) at a time, each one's latency; BENCH_TRIGGERS=0 skips it.
"""
