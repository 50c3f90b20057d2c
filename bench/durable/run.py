#!/usr/bin/env python3
"""Durable benchmarks (issue 15), each on SQLite and PostgreSQL:
1. throughput: N instances of a 5-activity sequential orchestration started at once (activities that
   return at once); work items/s = (N x (5 activities + 6 orchestrator steps)) / wall time;
2. fan-out/fan-in: one instance calling 1,000 no-op activities with task_all: wall time;
3. a chain of 100 sequential no-op activities in one instance: each activity answers the time it ran,
   and the gaps between them are the steps' latencies (p50, p90 and the mean reported).
Usage: run.py NIMBUS_BINARY   (N=1000 instances by default; PG_URL for PostgreSQL, "" to skip it)"""
import http.client, json, os, shutil, socket, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor

NIMBUS = os.path.abspath(sys.argv[1])
N = int(os.environ.get("N", "1000"))
# Clients starting the N instances at once (1: one after another, as the first slice measured).
STARTERS = int(os.environ.get("STARTERS", "8"))
# Chains measured one after another (ONLY=chain measures chains alone).
CHAINS = int(os.environ.get("CHAINS", "3"))
ONLY = os.environ.get("ONLY", "")
PG_URL = os.environ.get("PG_URL", "postgres://postgres@127.0.0.1:5432/test")

APP = '''
import time
import nimbus
app = nimbus.App()

@app.activity("noop")
def noop(x, ctx):
    return x

@app.orchestrator("sequence")
def sequence(ctx):
    x = 0
    for _ in range(5):
        x = yield ctx.call_activity("noop", x + 1)
    return x

@app.orchestrator("fanout")
def fanout(ctx):
    results = yield ctx.task_all([ctx.call_activity("noop", i) for i in range(ctx.get_input())])
    return len(results)

@app.activity("clock")
def clock(x, ctx):
    return time.time()

@app.orchestrator("chain")
def chain(ctx):
    # Each activity answers when it ran: the gaps are the steps' latencies, end to end.
    times = []
    for i in range(ctx.get_input()):
        times.append((yield ctx.call_activity("clock", i)))
    return times
'''

MANIFEST = '''
[workers.main]
runtime = "python"
entry = "app.py"

[functions.noop]
concurrency = 16
max_instances = 2

[functions.sequence]
concurrency = 64
max_instances = 1

[functions.fanout]
concurrency = 4
max_instances = 1

[functions.clock]
concurrency = 16
max_instances = 1

[functions.chain]
concurrency = 4
max_instances = 1
'''


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, store):
        self.dir = tempfile.mkdtemp(prefix="nimbus-durable-bench-")
        with open(f"{self.dir}/app.py", "w") as f:
            f.write(APP)
        with open(f"{self.dir}/nimbus.toml", "w") as f:
            f.write(MANIFEST)
        self.port = free_port()
        argv = [NIMBUS, "up", self.dir, "--port", str(self.port)]
        if store:
            argv += ["--store", store]
        env = dict(os.environ, NIMBUS_WORKER_USER=os.environ.get("NIMBUS_WORKER_USER", "root"), NIMBUS_LOG="warn")
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=open(f"{self.dir}/log", "w"))
        deadline = time.time() + 60
        while True:
            try:
                if self.request("GET", "/_nimbus/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise SystemExit("the node did not start: " + open(f"{self.dir}/log").read()[-2000:])
            time.sleep(0.05)
        self.token = open(f"{self.dir}/.nimbus/admin-token").read().strip()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port)

    def request(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"authorization": f"Bearer {getattr(self, 'token', '')}", "content-type": "application/json"}
        conn.request(method, path, None if body is None else json.dumps(body), headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, (json.loads(data) if data else None)

    def start(self, name, data):
        status, body = self.request("POST", f"/_nimbus/durable/orchestrations/{name}", data)
        assert status == 202, (status, body)
        return body["id"]

    def wait_listed(self, timeout=600):
        """Waits until no instance is pending or running, one list call a round (polling each of N
        instances would load the node more than the work measured), then checks none failed."""
        deadline = time.time() + timeout
        while True:
            status, body = self.request("GET", "/_nimbus/durable/instances?runtimeStatus=Pending,Running&top=1")
            assert status == 200, body
            if not body:
                break
            if time.time() > deadline:
                raise SystemExit("instances did not finish")
            time.sleep(0.05)
        status, body = self.request("GET", "/_nimbus/durable/instances?runtimeStatus=Failed,Terminated&top=1")
        assert status == 200 and not body, f"an instance did not complete: {body}"

    def wait_all(self, ids, timeout=600):
        deadline = time.time() + timeout
        pending = list(ids)
        while pending:
            if time.time() > deadline:
                raise SystemExit(f"{len(pending)} instances did not finish")
            still = []
            for id in pending:
                status, body = self.request("GET", f"/_nimbus/durable/instances/{id}")
                if status == 202:
                    still.append(id)
                elif body["runtimeStatus"] != "Completed":
                    raise SystemExit(f"instance {id}: {body}")
            pending = still
            if pending:
                # One instance (the chain) is polled closely: 50 ms would add up to 0.5 ms a step.
                time.sleep(0.002 if len(pending) == 1 else 0.05)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


def throughput_and_fanout(node, label):
    t0 = time.perf_counter()
    with ThreadPoolExecutor(STARTERS) as pool:
        ids = list(pool.map(lambda _: node.start("sequence", None), range(N)))
    started = time.perf_counter() - t0
    node.wait_listed()
    wall = time.perf_counter() - t0
    items = N * (5 + 6)
    print(f"{label}: {N} x 5-activity sequences: {wall:.2f} s ({started:.2f} s to start them, {STARTERS} at once), "
          f"{items / wall:,.0f} work items/s, {N * 5 / wall:,.0f} activities/s")
    t0 = time.perf_counter()
    node.wait_all([node.start("fanout", 1000)])
    print(f"{label}: fan-out/fan-in of 1,000 activities: {time.perf_counter() - t0:.2f} s")


def run(label, store):
    node = Node(store)
    try:
        # Warm the pools: one of each.
        node.wait_all([node.start("sequence", None), node.start("fanout", 10), node.start("chain", 3)])
        if ONLY != "chain":
            throughput_and_fanout(node, label)
        for _ in range(CHAINS):
            t0 = time.time()
            id = node.start("chain", 100)
            node.wait_all([id])
            wall = time.time() - t0
            times = node.request("GET", f"/_nimbus/durable/instances/{id}")[1]["output"]
            gaps = sorted((b - a) * 1000 for a, b in zip(times, times[1:]))
            print(f"{label}: chain of 100 activities, a step: p50 {gaps[len(gaps) // 2]:.2f} ms, "
                  f"p90 {gaps[len(gaps) * 9 // 10]:.2f} ms, mean {sum(gaps) / len(gaps):.2f} ms; "
                  f"start to first activity {(times[0] - t0) * 1000:.1f} ms, last activity to status seen "
                  f"completed {(t0 + wall - times[-1]) * 1000:.1f} ms, wall {wall * 1000:.0f} ms")
    finally:
        node.stop()


if __name__ == "__main__":
    run("SQLite", None)
    if PG_URL:
        # A fresh schema each run: the database keeps what earlier runs left otherwise.
        schema = "bench_durable_%d" % os.getpid()
        subprocess.run(["psql", PG_URL, "-qc", f"CREATE SCHEMA {schema}"], check=True)
        try:
            run("PostgreSQL", f"{PG_URL}?options=-csearch_path%3D{schema}")
        finally:
            subprocess.run(["psql", PG_URL, "-qc", f"DROP SCHEMA {schema} CASCADE"], check=True, stderr=subprocess.DEVNULL)
