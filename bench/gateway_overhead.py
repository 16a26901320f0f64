"""Gateway overhead: the same `yaie bench serve` load against `yaie serve` without the gateway, with it (keys +
limits + budget + ledger, PII off), and with PII redaction on. One server at a time, same flags.

    .venv/bin/python bench/gateway_overhead.py --num-prompts 192 --concurrency 32 --out /tmp/gw-bench

Prints p50/p99 E2E latency and throughput per setup, and the gateway's own admit/settle time from its
`yaie:gateway_overhead_seconds` histogram.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
ADMIN_KEY = "bench-admin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(out: Path, name: str, gateway_yaml: Path | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [sys.executable, "-m", "yaie.cli", "serve", "--port", str(port), "--max-model-len", "512",
               "--embedding-model", "none"]
    if gateway_yaml is not None:
        command += ["--gateway-config", str(gateway_yaml)]
    env = {k: v for k, v in os.environ.items() if k != "YAIE_API_KEY"}
    env |= {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "YAIE_ADMIN_KEY": ADMIN_KEY}
    log = (out / f"{name}.log").open("wb")
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"{name}: server exited; see {out / name}.log")
        time.sleep(0.5)
    raise SystemExit(f"{name}: server not healthy")


def bench(url: str, key: str | None, args: argparse.Namespace, out_json: Path) -> dict[str, float]:
    command = [sys.executable, "-m", "yaie.cli", "bench", "serve", "--url", url, "--endpoint", "chat",
               "--num-prompts", str(args.num_prompts), "--concurrency", str(args.concurrency), "--input-len",
               str(args.input_len), "--output-len", str(args.output_len), "--ignore-eos", "--prompt-format", "text",
               "--json", str(out_json), "--disable-tqdm"]
    if key is not None:
        command += ["--api-key", key]
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                   stdout=subprocess.DEVNULL)
    return json.loads(out_json.read_text())


def overhead_quantiles(url: str) -> dict[str, str]:
    """Bucket upper bounds that contain the median and p99 of the admit and settle phases."""
    text = httpx.get(url + "/metrics").text
    result = {}
    for phase in ("admit", "settle"):
        buckets = [(float(le), float(v)) for le, v in re.findall(
            rf'yaie:gateway_overhead_seconds_bucket{{le="([^"]+)",phase="{phase}"}} (\S+)', text)]
        total = buckets[-1][1] if buckets else 0
        for q in (0.5, 0.99):
            bound = next((le for le, v in buckets if total and v >= q * total), float("nan"))
            result[f"{phase}_p{int(q * 100)}_le_ms"] = f"{bound * 1000:g}"
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-prompts", type=int, default=192)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("/tmp/yaie-gateway-bench"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    gateway_yaml = args.out / "gateway.yaml"
    gateway_yaml.write_text(f"gateway:\n  data_dir: {args.out / 'data'}\n")
    rows = {}
    for name, use_gateway, pii in (("plain", False, None), ("gateway", True, "off"), ("gateway+pii", True, "redact")):
        process, url = start(args.out, name, gateway_yaml if use_gateway else None)
        try:
            key = None
            if use_gateway:
                response = httpx.post(url + "/admin/keys", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                                      json={"name": name, "rpm": 100_000, "tpm": 100_000_000, "budget_usd": 1000,
                                            "max_concurrency": 1000, "pii_mode": pii})
                key = response.json()["secret"]
            bench(url, key, args, args.out / f"{name}-warmup.json")  # warm caches and the engine
            stats = bench(url, key, args, args.out / f"{name}.json")
            metrics = stats["metrics"]
            rows[name] = {"requests_per_s": round(metrics["request_throughput"], 3),
                          "e2e_p50_ms": round(metrics["e2el"]["median_ms"], 1),
                          "e2e_p99_ms": round(metrics["e2el"]["p99_ms"], 1),
                          "ttft_p50_ms": round(metrics["ttft"]["median_ms"], 1)}
            if use_gateway:
                rows[name] |= overhead_quantiles(url)
        finally:
            process.terminate()
            process.wait(timeout=60)
    print(json.dumps(rows, indent=2))
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
