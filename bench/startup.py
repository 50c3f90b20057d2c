#!/usr/bin/env python3
"""Cold start: time from spawning `nimbus up` (SQLite, empty app, fresh data dir) to the first
200 from /_nimbus/health/ready, median of N runs. Baseline in the same run: nginx started the same
way, to its first 200. Usage: startup.py NIMBUS_BINARY [RUNS]"""
import http.client, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close(); return port

def time_to_200(argv, port, path, cwd):
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = t0 + 10
        while time.perf_counter() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", path)
                if conn.getresponse().status == 200:
                    return (time.perf_counter() - t0) * 1000
            except OSError:
                pass
            time.sleep(0.0005)
        raise SystemExit(f"{argv[0]} never answered 200 on {path}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)

def nginx_argv(tmp, port):
    os.makedirs(f"{tmp}/www", exist_ok=True)
    with open(f"{tmp}/www/index.html", "w") as f:
        f.write("ok")
    with open(f"{tmp}/nginx.conf", "w") as f:
        f.write(f"""daemon off; pid {tmp}/nginx.pid; error_log {tmp}/error.log; worker_processes 2;
events {{}}
http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  server {{ listen 127.0.0.1:{port}; root {tmp}/www; }} }}
""")
    return ["nginx", "-c", f"{tmp}/nginx.conf", "-p", tmp]

def main():
    nimbus = os.path.abspath(sys.argv[1])
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    nimbus_ms, nginx_ms = [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as app:
            port = free_port()
            nimbus_ms.append(time_to_200([nimbus, "up", app, "--port", str(port)], port, "/_nimbus/health/ready", app))
        with tempfile.TemporaryDirectory() as tmp:
            port = free_port()
            nginx_ms.append(time_to_200(nginx_argv(tmp, port), port, "/", tmp))
    med_nimbus, med_nginx = statistics.median(nimbus_ms), statistics.median(nginx_ms)
    print(f"nimbus up -> ready (fresh data dir, SQLite): median {med_nimbus:.1f} ms "
          f"(min {min(nimbus_ms):.1f}, max {max(nimbus_ms):.1f}) over {runs} runs")
    print(f"nginx start -> first 200 (baseline):         median {med_nginx:.1f} ms "
          f"(min {min(nginx_ms):.1f}, max {max(nginx_ms):.1f})")
    print(f"ratio nimbus/nginx: {med_nimbus / med_nginx:.2f}")

if __name__ == "__main__":
    main()
