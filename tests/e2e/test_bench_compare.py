"""`yaie bench compare` for real: two of our servers (with and without prefix caching) on the default model,
W1 and W3 at a small scale, through the `yaie` command; checks the JSON, the docs table and the chart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import ROOT, free_port
from yaie.bench.compare_report import DOCS_BEGIN, DOCS_END

SCALE = 0.05
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_compare_two_yaie_systems_writes_json_docs_and_chart(tmp_path: Path) -> None:
    docs, chart, json_path = tmp_path / "benchmarks.md", tmp_path / "img" / "compare.png", tmp_path / "compare.json"
    docs.write_text("# Benchmarks\n\nearlier figures\n")
    port = free_port()
    command = [sys.executable, "-m", "yaie.cli", "bench", "compare", "--systems", "yaie,yaie-noprefix",
               "--workloads", "W1,W3", "--scale", str(SCALE), "--port", str(port), "--yaie-args",
               "--max-model-len 1024 --num-blocks 256", "--json", str(json_path), "--docs", str(docs),
               "--chart", str(chart), "--log-dir", str(tmp_path / "logs"), "--startup-timeout", "240",
               "--disable-tqdm"]
    env = {key: value for key, value in os.environ.items() if key not in ("YAIE_API_KEY", "OPENAI_API_KEY")}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]

    document = json.loads(json_path.read_text())
    assert [s["system"] for s in document["systems"]] == ["yaie", "yaie-noprefix"]
    for system in document["systems"]:
        assert system["error"] is None and system["prompt_format"] == "token-ids"
        assert system["startup_s"] > 0 and system["idle_rss_mb"] > 100
        assert [w["workload"] for w in system["workloads"]] == ["W1", "W3"]
        for workload in system["workloads"]:
            metrics = workload["groups"][0]["metrics"]
            assert metrics["num_failed"] == 0 and metrics["output_throughput"] > 0
            assert workload["peak_rss_mb"] >= system["idle_rss_mb"] * 0.8
    w3 = document["workloads"][1]["groups"][0][1]
    assert (w3["num_prompts"], w3["input_len"], w3["shared_prefix_len"]) == (2, 22, 20)

    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nearlier figures\n") and text.count(DOCS_BEGIN) == text.count(DOCS_END) == 1
    assert "| workload | metric | yaie | yaie-noprefix |" in text
    assert "| W3 | TTFT p50 (ms) ↓ |" in text and "W3 TTFT p50, yaie / yaie-noprefix" in text
    assert "](img/compare.png)" in text and "--scale 0.05" in text
    assert text.split(DOCS_BEGIN)[1].split(DOCS_END)[0].strip() in finished.stdout
    png = chart.read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 20_000
    log_text = (tmp_path / "logs" / "yaie-noprefix.log").read_text()
    assert "--no-prefix-caching" in log_text.splitlines()[0]
