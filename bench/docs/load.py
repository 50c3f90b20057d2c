#!/usr/bin/env python3
"""Preloads the docs benchmark's data through the REST API, as transactional batches of 100
creates within one partition (POST /_nimbus/docs/{container}/batch), CONCURRENCY at a time.

    load.py URL TOKEN items COUNT            r<i>: pk p<i % 100>, group g<i // 10> (10 per group)
    load.py URL TOKEN vectors COUNT DIMS     v<i>: pk p<i % 100>, embedding: DIMS random floats

Prints how long it took."""
import array
import http.client
import os
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

TEXT = "the quick brown fox jumps over the lazy dog, then it rests a while"
# 65536 evenly spaced values in [-1, 1) with 6 decimals: two random bytes pick one, which is
# much faster than formatting a random float each time.
FLOATS = [f"{k / 32768 - 1:.6f}" for k in range(65536)]


def main():
    url, token, kind, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    dims = int(sys.argv[5]) if len(sys.argv) > 5 else 384
    concurrency = int(os.environ.get("LOAD_CONCURRENCY", "4"))
    container = "items" if kind == "items" else "vectors"
    target = urllib.parse.urlsplit(url)
    local = threading.local()

    def item(i):
        if kind == "items":
            return f'{{"id":"r{i}","pk":"p{i % 100}","group":"g{i // 10}","n":{i},"text":"{TEXT}"}}'
        raw = array.array("H", os.urandom(2 * dims))
        return f'{{"id":"v{i}","pk":"p{i % 100}","embedding":[{",".join(map(FLOATS.__getitem__, raw))}]}}'

    def send(batch):
        pk, ids = batch
        ops = ",".join(f'{{"op":"create","item":{item(i)}}}' for i in ids)
        body = f'{{"partitionKey":"p{pk}","operations":[{ops}]}}'.encode()
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
        local.conn.request(
            "POST",
            f"/_nimbus/docs/{container}/batch",
            body,
            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        response = local.conn.getresponse()
        text = response.read()
        if response.status != 200:
            raise SystemExit(f"batch of partition p{pk} failed: {response.status} {text[:500]!r}")

    batches = []
    for pk in range(100):
        ids = list(range(pk, count, 100))
        batches += [(pk, ids[k : k + 100]) for k in range(0, len(ids), 100)]
    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in pool.map(send, batches):
            pass
    took = time.monotonic() - started
    print(f"loaded {count} {kind} in {took:.1f} s ({count / took:,.0f} items/s, {len(batches)} batches)")


if __name__ == "__main__":
    main()
