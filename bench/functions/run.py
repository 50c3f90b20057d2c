#!/usr/bin/env python3
"""Functions benchmarks, each against a baseline measured in the same run:
1. warm invocations of a trivial handler through Nimbus vs the same handler on a plain server hit
   directly (Python: asyncio; Node: http), wrk -t2 -c32: throughput ratio, added p50/p99;
2. cold start of a scaled-to-zero Python function (request to response) vs `python3 -c pass`;
3. streaming: time to the first chunk through Nimbus vs direct.
Usage: run.py NIMBUS_BINARY [DURATION]   (ONLY=cold: the cold starts alone; ROUNDS=20)"""
import http.client, os, re, shutil, socket, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
NIMBUS = os.path.abspath(sys.argv[1])
DURATION = sys.argv[2] if len(sys.argv) > 2 else "10s"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(port, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def wait_200(port, path, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if get(port, path)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"no 200 from :{port}{path}")


def to_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    n, unit = float(m.group(1)), m.group(2)
    return n / 1000 if unit == "us" else n * 1000 if unit == "s" else n


def wrk(port, path):
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{DURATION}", "--latency", f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"wrk saw {errors.group(1)} error responses from :{port}{path}")
    return rps, to_ms(lat["50"]), to_ms(lat["99"])


class Nimbus:
    def __init__(self, runtime, function_settings, worker_settings=""):
        self.dir = tempfile.mkdtemp(prefix="nimbus-bench-")
        os.makedirs(f"{self.dir}/functions")
        entry = "app.py" if runtime == "python" else "app.js"
        shutil.copy(f"{HERE}/{entry}", f"{self.dir}/functions/{entry}")
        with open(f"{self.dir}/nimbus.toml", "w") as f:
            f.write(f'[workers.main]\nruntime = "{runtime}"\nentry = "functions/{entry}"\n{worker_settings}\n\n')
            f.write('[[routes]]\npath = "/*"\nauth = "anonymous"\n\n')
            for name, settings in function_settings.items():
                f.write(f"[functions.{name}]\n{settings}\n\n")
        self.port = free_port()
        # As root, workers would run as `nobody`, who cannot run an interpreter under root's home
        # (pyenv): keep them root here; Landlock confines them all the same.
        env = dict(os.environ, NIMBUS_WORKER_USER=os.environ.get("NIMBUS_WORKER_USER", "root"))
        self.proc = subprocess.Popen([NIMBUS, "up", self.dir, "--port", str(self.port)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=open(f"{self.dir}/nimbus.log", "w"))
        wait_200(self.port, "/_nimbus/health/ready")
        self.token = open(f"{self.dir}/.nimbus/admin-token").read().strip()

    def metric(self, prefix):
        _, body = get(self.port, "/_nimbus/metrics", {"authorization": f"Bearer {self.token}"})
        for line in body.decode().splitlines():
            if line.startswith(prefix):
                return float(line.rsplit(" ", 1)[1])
        return None

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


class Direct:
    def __init__(self, argv):
        self.port = free_port()
        self.proc = subprocess.Popen(argv + [str(self.port)], stdout=subprocess.DEVNULL)
        wait_200(self.port, "/hello")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def first_chunk_ms(port, path, n=30):
    times = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        t0 = time.perf_counter()
        s.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
        seen = b""
        while b"first" not in seen:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit(f"{path} closed before its first chunk")
            seen += chunk
        times.append((time.perf_counter() - t0) * 1000)
        while not seen.endswith(b"0\r\n\r\n"):  # the last chunk
            chunk = s.recv(65536)
            if not chunk:
                break
            seen += chunk
        s.close()
    return statistics.median(times)


def warm(runtime, direct_argv):
    print(f"\n## Warm invocations, {runtime} (wrk -t2 -c32 -d{DURATION})")
    direct = Direct(direct_argv)
    configs = {
        "one instance, concurrency 32": {"hello": "min_instances = 1\nmax_instances = 1\nconcurrency = 32"},
        "defaults (scale by request count)": {"hello": "min_instances = 1"},
    }
    try:
        d_rps, d_p50, d_p99 = wrk(direct.port, "/hello")
        print(f"direct {runtime} server:                     {d_rps:9.0f} req/s  p50 {d_p50:.2f} ms  p99 {d_p99:.2f} ms")
        for label, settings in configs.items():
            node = Nimbus(runtime, settings)
            try:
                wrk(node.port, "/hello")  # let the pool settle (scale out)
                rps, p50, p99 = wrk(node.port, "/hello")
                instances = node.metric('nimbus_function_instances{function="hello"}')
            finally:
                node.stop()
            print(f"nimbus, {label:34s} {rps:9.0f} req/s  p50 {p50:.2f} ms  p99 {p99:.2f} ms  "
                  f"ratio {rps / d_rps:.2f}  added p50 {p50 - d_p50:+.2f} ms  p99 {p99 - d_p99:+.2f} ms  "
                  f"({instances:.0f} instances)")
        node = Nimbus(runtime, {"hello": "min_instances = 1", "drip": "min_instances = 1"})
        try:
            n_ttfb, d_ttfb = first_chunk_ms(node.port, "/drip"), first_chunk_ms(direct.port, "/drip")
        finally:
            node.stop()
        print(f"first streamed chunk: nimbus {n_ttfb:.2f} ms, direct {d_ttfb:.2f} ms, added {n_ttfb - d_ttfb:+.2f} ms")
    finally:
        direct.stop()


def cold_start(rounds=10):
    print("\n## Cold start of a scaled-to-zero Python function (request to response)")
    python = shutil.which("python3")
    base = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run([python, "-c", "pass"], check=True)
        base.append((time.perf_counter() - t0) * 1000)
    print(f"`python3 -c pass` ({python}): median {statistics.median(base):.1f} ms")
    # Confined (the default) and unconfined, alternating, so both see the same machine.
    results = {"confined": [], "unconfined": []}
    for _ in range(2):
        results["confined"] += cold_requests(rounds // 2, "")
        results["unconfined"] += cold_requests(rounds // 2, "[workers.main.sandbox]\nenabled = false")
    b = statistics.median(base)
    for name, cold in results.items():
        c = statistics.median(cold)
        print(f"cold request through nimbus, {name}: median {c:.1f} ms (min {min(cold):.1f}, max {max(cold):.1f})"
              f"  ratio {c / b:.2f}")
    confined, unconfined = (statistics.median(results[k]) for k in ("confined", "unconfined"))
    print(f"sandbox cost per cold start: {confined - unconfined:+.1f} ms (ratio {confined / unconfined:.2f})")


def cold_requests(rounds, worker_settings):
    node = Nimbus("python", {"hello": 'min_instances = 0\nidle_timeout = "300ms"'}, worker_settings)
    cold = []
    try:
        for _ in range(rounds):
            deadline = time.time() + 30
            while node.metric('nimbus_function_instances{function="hello"}') not in (None, 0.0):
                if time.time() > deadline:
                    raise SystemExit("the function never scaled to zero")
                time.sleep(0.05)
            t0 = time.perf_counter()
            status, _ = get(node.port, "/hello")
            cold.append((time.perf_counter() - t0) * 1000)
            assert status == 200
        starts = node.metric('nimbus_function_cold_starts_total{function="hello"}')
        if starts != rounds:
            raise SystemExit(f"expected {rounds} cold starts, the node counted {starts}")
    finally:
        node.stop()
    return cold


if __name__ == "__main__":
    only = os.environ.get("ONLY")  # "cold": the cold-start part alone
    if only != "cold":
        warm("python", [sys.executable, f"{HERE}/direct_server.py"])
        warm("node", ["node", f"{HERE}/direct_node.js"])
    cold_start(rounds=int(os.environ.get("ROUNDS", "20")))
