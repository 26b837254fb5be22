"""The local server under load: N clients x M requests on 127.0.0.1, latency percentiles, errors, server memory.

    python benchmarks/serve_load.py --model-dir <run>/model --audio clip.wav --clients 8 --requests 25

Starts `python serve.py` on a free local port (or uses --url of one already running), sends every client's requests
back to back from its own thread (bounded: clients x requests in all), and reports requests/s, latency p50/p90/p99
and max, the status codes seen, and the server's resident memory before and after (from /proc). Writes
<out>/serve-load.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes, content_type: str, timeout: float) -> tuple:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    began = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as err:
        status = err.code
    except OSError as err:  # refused, reset, timed out: counted, never raised
        status = type(err).__name__
    return status, time.perf_counter() - began


def start_server(model_dir, log=None, seconds: float = 180, overrides=()) -> tuple:
    """`python serve.py model_dir=... <overrides>` on a free local port (its stderr into the file `log`, if given),
    once it answers /ping: (the process, its base URL)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, str(REPO / "serve.py"), f"model_dir={model_dir}", f"port={port}",
                               *overrides],
                              cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=open(log, "w") if log else subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + seconds
    while True:
        try:
            urllib.request.urlopen(f"{base}/ping", timeout=5).read()
            return server, base
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                raise SystemExit("serve.py did not come up" + (f": see {log}" if log else ""))
            time.sleep(0.5)


def percentile(values, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--audio", required=True, help="the WAV (or FLAC...) clip every request sends")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=25, help="per client")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--runtime", default="torch", help="inference.runtime: torch, onnx or onnx_int8 (export.py's)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)

    server, base = start_server(args.model_dir, overrides=[f"inference.runtime={args.runtime}"])
    try:
        body = Path(args.audio).read_bytes()
        post(f"{base}/invocations", body, "audio/wav", args.timeout)  # warm-up, not counted
        before = rss_mb(server.pid)
        began = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(lambda _: post(f"{base}/invocations", body, "audio/wav", args.timeout),
                                    range(args.clients * args.requests)))
        seconds = time.perf_counter() - began
        after = rss_mb(server.pid)
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=30)
    latencies = [t for _, t in results]
    statuses = Counter(str(s) for s, _ in results)
    summary = {"runtime": args.runtime, "clients": args.clients, "requests": len(results), "seconds": seconds,
               "requests_per_s": len(results) / seconds, "statuses": dict(statuses),
               "errors": sum(n for s, n in statuses.items() if s != "200"),
               "latency_s": {"p50": percentile(latencies, 0.5), "p90": percentile(latencies, 0.9),
                             "p99": percentile(latencies, 0.99), "max": max(latencies)},
               "server_rss_mb": {"before": before, "after": after}, "server_alive": alive}
    lat = summary["latency_s"]
    table = (f"`python benchmarks/serve_load.py --clients {args.clients} --requests {args.requests} "
             f"--runtime {args.runtime}`: "
             f"{len(results)} requests of {Path(args.audio).name}\n\n"
             "| requests/s | p50 | p90 | p99 | max | errors | server RSS before → after |\n"
             "|---|---|---|---|---|---|---|\n"
             f"| {summary['requests_per_s']:.1f} | {lat['p50'] * 1000:.0f} ms | {lat['p90'] * 1000:.0f} ms | "
             f"{lat['p99'] * 1000:.0f} ms | {lat['max'] * 1000:.0f} ms | {summary['errors']} | "
             f"{before:.0f} → {after:.0f} MB |\n")
    os.makedirs(args.out, exist_ok=True)
    (Path(args.out) / "serve-load.json").write_text(json.dumps(summary, indent=1))
    (Path(args.out) / "serve-load.md").write_text(table)
    print(table)
    return summary


if __name__ == "__main__":
    main()
