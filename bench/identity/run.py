"""Drives bench/identity.sh: starts Nimbus with an identity provider, measures the token endpoint
and the sign-in form with wrk, and compares with openssl's RSA-2048 signing rate."""
import base64
import hashlib
import http.cookiejar
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

NIMBUS, DURATION = sys.argv[1], sys.argv[2]
TMP = tempfile.mkdtemp(prefix="nimbus-bench-identity-")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wrk(url, script, threads=2, connections=50):
    path = f"{TMP}/bench.lua"
    with open(path, "w") as f:
        f.write(script)
    before = cpu_ticks(NODE.pid)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{DURATION}", "-s", path, url],
                         capture_output=True, text=True, check=True).stdout
    ticks = cpu_ticks(NODE.pid) - before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise SystemExit(f"wrk saw {bad.group(1)} error responses from {url}:\n{out}")
    cpu_seconds = ticks / os.sysconf("SC_CLK_TCK")
    return rps, total / cpu_seconds if cpu_seconds else float("nan")


def openssl_sign_rate():
    out = subprocess.run(["openssl", "speed", "-seconds", "5", "rsa2048"], capture_output=True, text=True).stdout
    # "rsa 2048 bits 0.000600s 0.000018s   1666.7  55555.6"
    line = next(l for l in out.splitlines() if re.match(r"\s*rsa\s+2048 bits", l))
    return float(line.split()[-2])


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def refresh_token(base, n):
    """A user's refresh token through the hosted flow (sign-up, then the code exchange)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPCookieProcessor(jar))
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    query = urllib.parse.urlencode({"client_id": "spa", "redirect_uri": "http://localhost:9/cb", "response_type": "code",
                                    "scope": "openid", "code_challenge": challenge, "code_challenge_method": "S256"})
    def go(url, data=None):
        try:
            return opener.open(url, data=data)
        except urllib.error.HTTPError as e:
            return e
    location = go(f"{base}/oauth2/authorize?{query}").headers["location"]
    request = location.split("request=")[1]
    page = go(f"{base}/account/signup?request={request}").read().decode()
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
    form = urllib.parse.urlencode({"csrf": csrf, "request": request, "email": f"bench{n}@example.com",
                                   "password": "correct horse battery"}).encode()
    code = re.search(r"code=([0-9a-f]+)", go(f"{base}/account/signup", form).headers["location"]).group(1)
    form = urllib.parse.urlencode({"grant_type": "authorization_code", "client_id": "spa", "code": code,
                                   "redirect_uri": "http://localhost:9/cb", "code_verifier": verifier}).encode()
    import json
    return json.loads(go(f"{base}/oauth2/token", form).read())["refresh_token"]


os.makedirs(f"{TMP}/app")
with open(f"{TMP}/app/nimbus.toml", "w") as f:
    f.write('[identity]\naudience = "api://bench"\n\n'
            '[[identity.clients]]\nid = "svc"\nsecret = "s3cret"\nscopes = ["read"]\ngrant_types = ["client_credentials"]\n\n'
            '[[identity.clients]]\nid = "spa"\npublic = true\nredirect_uris = ["http://localhost:9/cb"]\n')
PORT = free_port()
NODE = subprocess.Popen([NIMBUS, "up", f"{TMP}/app", "--port", str(PORT)], stdout=subprocess.DEVNULL,
                        stderr=open(f"{TMP}/nimbus.log", "w"))
BASE = f"http://127.0.0.1:{PORT}"
for _ in range(500):
    try:
        urllib.request.urlopen(f"{BASE}/_nimbus/health")
        break
    except OSError:
        time.sleep(0.02)

try:
    ceiling = openssl_sign_rate()
    basic = base64.b64encode(b"svc:s3cret").decode()
    cc_rps, cc_per_cpu = wrk(f"{BASE}/oauth2/token", f"""
wrk.method = "POST"
wrk.body = "grant_type=client_credentials&scope=read"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic {basic}"
""")
    # Refresh: each wrk thread holds one family and one connection (a token is good for one use).
    families = 8
    tokens = [refresh_token(BASE, i) for i in range(families)]
    rt_rps, rt_per_cpu = wrk(f"{BASE}/oauth2/token", """
local tokens = {%s}
local n = 0
function setup(thread) n = n + 1; thread:set("rt", tokens[n]) end
function request()
  return wrk.format("POST", nil, {["Content-Type"] = "application/x-www-form-urlencoded"},
    "grant_type=refresh_token&client_id=spa&refresh_token=" .. rt)
end
function response(status, headers, body)
  local next = body:match('"refresh_token":"(rt_[0-9a-f_]+)"')
  if next then rt = next end
end
""" % ", ".join(f'"{t}"' for t in tokens), threads=families, connections=families)
    csrf = secrets.token_hex(32)
    si_rps, si_per_cpu = wrk(f"{BASE}/account/signin", f"""
wrk.method = "POST"
wrk.body = "csrf={csrf}&email=bench0%40example.com&password=correct+horse+battery"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Cookie"] = "nimbus_csrf={csrf}"
""", connections=8)
    print(f"openssl speed rsa2048: {ceiling:,.0f} signs/s on one core")
    print(f"client_credentials: {cc_rps:,.0f} tokens/s, {cc_per_cpu:,.0f} per CPU-second of nimbus "
          f"= {cc_per_cpu / ceiling:.2f}x openssl's per-core rate")
    print(f"refresh (rotating, {families} connections): {rt_rps:,.0f} responses/s, {rt_per_cpu:,.0f} per CPU-second "
          f"= {rt_per_cpu / ceiling:.2f}x per response, {2 * rt_per_cpu / ceiling:.2f}x per signature (access + ID token)")
    print(f"sign-ins (argon2id m=19456 KiB, t=2, p=1): {si_rps:,.0f}/s, {si_per_cpu:,.1f} per CPU-second")
finally:
    NODE.terminate()
    NODE.wait()
