#!/usr/bin/env python3
"""Gather what bench/gpu/session.sh left in its work folder into one results.json and a
markdown table (printed, and written as table.md). Standard library only; safe to run at
any time (session.sh runs it after every step, so a session cut short still leaves its
results).

  python3 bench/gpu/summarize.py --work /tmp/rscvi-gpu --out "$OUT"

Work folder layout (written by session.sh):
  env.json                      session facts (GPU, driver, budget, versions)
  gpucheck/status.json          {"rc", "seconds"}; gpucheck/gpu-check.json from rscvi-cli
  data/N<n>.status.json         {"n_cells", "source": synth|fake|none, "rc", "seconds"}
  data/N<n>/meta.json           the dataset's meta.json
  runs/<tool>-N<n>-B<b>/run.json   {"tool", "n_cells", "batch_size", "epochs", "rc",
                                    "wall_seconds", "baseline_mib", "data_source"}
  runs/<tool>-N<n>-B<b>/metrics.json  the tool's own metrics.json
  runs/<tool>-N<n>-B<b>/mem.txt  nvidia-smi memory.used samples (MiB), one per line

s/epoch in the table ("steady") is computed the same way for both tools from their
"epoch_seconds" lists: the median of the epochs after the first (warm-up: kernel
compilation, allocator growth, cudnn/cuBLAS heuristics) and before the last (which holds
the one validation pass, for scvi-tools always, for rscvi if it times it inside the
epoch); with two epochs the second, with one the only one. "mean" is the tool's own
seconds_per_epoch (wall of the whole training call / epochs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def read_json(p: Path):
    try:
        return json.loads(p.read_text())
    except Exception:
        return None


def steady_seconds(epoch_seconds):
    if not isinstance(epoch_seconds, list) or not epoch_seconds:
        return None
    e = [float(x) for x in epoch_seconds]
    if len(e) >= 3:
        return statistics.median(e[1:-1])
    return e[-1]


def peak_mib(mem_file: Path):
    try:
        vals = []
        for line in mem_file.read_text().splitlines():
            line = line.strip().split(",")[0].strip()
            if line and line.replace(".", "", 1).isdigit():
                vals.append(float(line))
        return (max(vals), len(vals)) if vals else (None, 0)
    except Exception:
        return None, 0


def fmt(x, nd=3):
    if x is None:
        return "—"
    if isinstance(x, float):
        if abs(x) >= 100:
            return f"{x:.0f}"
        return f"{x:.{nd}g}" if abs(x) < 1 else f"{x:.{nd}f}".rstrip("0").rstrip(".")
    return str(x)


def collect(work: Path):
    res = {"env": read_json(work / "env.json") or {}}
    gc = read_json(work / "gpucheck" / "status.json") or {}
    gc["report"] = read_json(work / "gpucheck" / "gpu-check.json")
    res["gpu_check"] = gc
    datasets = {}
    for st in sorted((work / "data").glob("N*.status.json")):
        d = read_json(st) or {}
        n = st.name.split(".")[0]
        d["meta"] = read_json(work / "data" / n / "meta.json")
        datasets[n] = d
    res["datasets"] = datasets
    runs = []
    for rd in sorted((work / "runs").glob("*")):
        r = read_json(rd / "run.json")
        if r is None:
            continue
        m = read_json(rd / "metrics.json")
        r["metrics"] = m
        pk, ns = peak_mib(rd / "mem.txt")
        r["peak_mib"], r["mem_samples"] = pk, ns
        base = r.get("baseline_mib")
        r["peak_over_baseline_mib"] = (pk - base) if (pk is not None and base is not None) else None
        if m:
            r["seconds_per_epoch_steady"] = steady_seconds(m.get("epoch_seconds"))
            r["seconds_per_epoch_mean"] = m.get("seconds_per_epoch")
        runs.append(r)
    res["runs"] = runs
    return res


def table(res) -> str:
    by = {}
    for r in res["runs"]:
        by[(r.get("n_cells"), r.get("batch_size"), r.get("tool"))] = r
    keys = sorted({(n, b) for (n, b, _) in by})
    lines = [
        "| N | batch size | epochs | rscvi s/epoch (steady / mean) | rscvi peak MiB | "
        "scvi-tools s/epoch (steady / mean) | scvi-tools peak MiB | speed-up (steady) | "
        "elbo_train rscvi / scvi-tools | data |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, b in keys:
        r, s = by.get((n, b, "rscvi")), by.get((n, b, "scvi-tools"))

        def cell(x, what):
            if x is None:
                return "not run"
            if x.get("metrics") is None:
                return f"failed (rc {x.get('rc')})"
            if what == "spe":
                return f"{fmt(x.get('seconds_per_epoch_steady'))} / {fmt(x.get('seconds_per_epoch_mean'))}"
            if what == "mem":
                return fmt(x.get("peak_mib"))
            if what == "elbo":
                return fmt((x.get("metrics") or {}).get("elbo_train_last"), 5)
            return "?"

        su = None
        if r and s and r.get("seconds_per_epoch_steady") and s.get("seconds_per_epoch_steady"):
            su = s["seconds_per_epoch_steady"] / r["seconds_per_epoch_steady"]
        ep = (r or s or {}).get("epochs")
        src = (r or s or {}).get("data_source", "?")
        lines.append(
            f"| {n} | {b} | {ep} | {cell(r, 'spe')} | {cell(r, 'mem')} | {cell(s, 'spe')} | "
            f"{cell(s, 'mem')} | {('%.2fx' % su) if su else '—'} | "
            f"{cell(r, 'elbo')} / {cell(s, 'elbo')} | {src} |"
        )
    gc = res.get("gpu_check") or {}
    env = res.get("env") or {}
    foot = [
        "",
        f"GPU: {env.get('gpu', '?')}; driver {env.get('driver', '?')}; "
        f"gpu-check rc {gc.get('rc', 'not run')}",
        "Peak MiB: max of nvidia-smi memory.used sampled every 200 ms during the run "
        "(whole GPU, CUDA context included). steady = median epoch after the first and "
        "before the last; mean = the tool's seconds_per_epoch. speed-up = scvi-tools steady / "
        "rscvi steady.",
    ]
    return "\n".join(lines + foot)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    res = collect(a.work)
    md = table(res)
    res["table_markdown"] = md
    for dest in [a.work] + ([a.out] if a.out else []):
        dest.mkdir(parents=True, exist_ok=True)
        tmp = dest / "results.json.tmp"
        tmp.write_text(json.dumps(res, indent=1) + "\n")
        tmp.replace(dest / "results.json")
        (dest / "table.md").write_text(md + "\n")
    if not a.quiet:
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
