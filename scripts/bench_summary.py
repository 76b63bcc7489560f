"""Prints the benchmark results in OUT (default bench-results) as the Markdown
table BENCHMARKS.md holds."""
import json
import pathlib
import sys

out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "bench-results")
print("| scenario | requests | achieved req/s | × /healthz | 200s per s | p50 ms | p99 ms | p99.9 ms | dropped | errors other than 409/410 | verify | voucherd VmHWM |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for name in ["flash", "half", "hot", "users40m", "pg-hot", "cluster-flash", "cluster-hot"]:
    path = out / f"{name}.json"
    if not path.exists():
        continue
    run = json.loads(path.read_text())
    phase = run["phase"]
    latency = phase["latency"]
    unexpected = sum(s["count"] for s in phase["statuses"] if s["status"] not in (200, 409, 410))
    seconds = phase["elapsed_s"] or 1
    ratio = phase.get("ratio_to_baseline")
    verify = run.get("verify")
    verdict = "off" if not verify else ("passed" if verify["passed"] else "FAILED")
    hwm_file = out / f"{name}.vmhwm"
    hwm = hwm_file.read_text().split(":", 1)[1].strip() if hwm_file.exists() else "?"
    cells = [
        name,
        str(phase["completed"]),
        f"{phase['achieved_rate']:.0f}",
        f"{ratio:.2f}" if ratio is not None else "–",
        f"{phase['ok'] / seconds:.0f}",
        f"{latency['p50_ms']:.2f}",
        f"{latency['p99_ms']:.2f}",
        f"{latency['p999_ms']:.2f}",
        str(phase["dropped"]),
        str(unexpected),
        verdict,
        hwm,
    ]
    print("| " + " | ".join(cells) + " |")
