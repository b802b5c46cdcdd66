#!/usr/bin/env python3
"""Medians of tools/bench/limit_sweep.sh's rounds, as the Markdown tables in
docs/performance.md ("Choosing the in-flight limit").

Usage: limit_sweep_summary.py OUT_DIR

With gnuplot installed it also draws OUT_DIR/limit_sweep.svg: throughput (as a share of the
best fixed depth's) and p99 against the limit, one line per server and workload, auto as a
point at the median limit it ended at (staged-to-reply p99).

Per server and workload: one row per fixed depth (median IOPS, MiB/s, p99 over the rounds)
and one for auto (median IOPS, the caller's p99, the staged-to-reply p99 and the limit it
ended at), then the issue's targets: auto's throughput against the best fixed depth's, and
its p99 against that of the smallest fixed depth reaching 90 % of the best. Auto keeps 256
requests outstanding in the benchmark, so the caller's p99 includes the wait for a slot
(Little's law: 256 / throughput); the staged-to-reply p99 is the latency of the requests the
limit lets through, which is what a fixed depth's p99 measures.
"""
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict


def main(out):
    fixed = defaultdict(lambda: defaultdict(list))  # (server, workload) -> depth -> runs
    auto = defaultdict(list)  # (server, workload) -> runs
    baseline = defaultdict(list)  # the same, from limit_sweep.sh's BASELINE binary
    for path in sorted(glob.glob(os.path.join(out, "*-r*-*.json"))):
        match = re.match(r"(.+)-(\w+)-(\w+)-r(\d+)-(fixed|auto|baseline)\.json$", os.path.basename(path))
        if not match:
            continue
        server, rw, bs, _, kind = match.groups()
        key = (server, f"{rw} {bs}")
        try:
            with open(path) as f:
                document = json.load(f)
        except (ValueError, OSError):
            print(f"skipping {path}: not a finished run", file=sys.stderr)
            continue
        if kind == "fixed":
            for point in document["sweep"]:
                fixed[key][point["iodepth"]].append(point["engines"]["nbdring"])
        elif kind == "auto":
            auto[key].append(document)
        else:
            baseline[key].append(document)

    summary = []
    curves = []  # (title, [(depth, share, p99)], (limit, share, wire p99))
    for key in fixed:
        server, workload = key
        large = workload.endswith("1m")
        unit = "MiB/s" if large else "IOPS"
        value = (lambda run: run["mib_per_s"]) if large else (lambda run: run["iops"])
        print(f"\n#### {server}, {workload} (medians of {len(auto[key])} rounds)\n")
        print(f"| limit | {unit} | p99 µs | limit at the end | staged-to-reply p99 µs |")
        print("|---|---|---|---|---|")
        medians = {}
        for depth in sorted(fixed[key]):
            runs = fixed[key][depth]
            throughput = statistics.median(value(run) for run in runs)
            p99 = statistics.median(run["lat_us"]["p99"] for run in runs)
            medians[depth] = (throughput, p99)
            print(f"| {depth} | {throughput:,.0f} | {p99:,.0f} | {depth} | |")
        best_depth = max(medians, key=lambda depth: medians[depth][0])
        best = medians[best_depth][0]
        reference = min(depth for depth in medians if medians[depth][0] >= 0.9 * best)
        reference_p99 = medians[reference][1]
        for label, runs in (("auto", auto[key]), ("auto, BASELINE build", baseline[key])):
            if not runs:
                continue
            auto_throughput = statistics.median(value(run) for run in runs)
            auto_p99 = statistics.median(run["lat_us"]["p99"] for run in runs)
            wire = [run["wire_lat_us"]["p99"] for run in runs if run.get("wire_lat_us")]
            wire_p99 = statistics.median(wire) if wire else float("nan")
            limits = sorted(run["inflight_limit"] for run in runs)
            print(f"| **{label}** (256 outstanding) | {auto_throughput:,.0f} | "
                  f"{auto_p99:,.0f} | {'/'.join(str(limit) for limit in limits)} | "
                  f"{wire_p99:,.0f} |")
            ratio = auto_throughput / best
            p99_ratio = wire_p99 / reference_p99
            met = ratio >= 0.9 and p99_ratio <= 1.5
            if label == "auto":
                curves.append((f"{server} {workload}",
                               [(depth, medians[depth][0] / best, medians[depth][1])
                                for depth in sorted(medians)],
                               (statistics.median(limits), ratio, wire_p99)))
            summary.append(
                f"| {server}{'' if label == 'auto' else ' (' + label + ')'} | {workload} | "
                f"{best_depth}: {best:,.0f} | {reference}: "
                f"{reference_p99:,.0f} µs | {auto_throughput:,.0f} (×{ratio:.2f}) | "
                f"{wire_p99:,.0f} µs (×{p99_ratio:.2f}) | "
                f"{'/'.join(str(l) for l in limits)} | {'met' if met else 'missed'} |")
    print("\n| server | workload | best fixed: depth, throughput | smallest depth with 90 %: "
          "p99 | auto throughput (× best) | auto staged-to-reply p99 (× reference) | "
          "auto's limits | target |")
    print("|---|---|---|---|---|---|---|---|")
    for row in summary:
        print(row)
    plot(out, curves)


def plot(out, curves):
    if not curves or shutil.which("gnuplot") is None:
        return
    data = os.path.join(out, "limit_sweep.dat")
    with open(data, "w") as f:
        for title, points, _ in curves:
            f.write(f"# {title}\n")
            for depth, share, p99 in points:
                f.write(f"{depth} {share:.4f} {p99:.1f}\n")
            f.write("\n\n")
        for title, _, (limit, share, p99) in curves:
            f.write(f"# {title} auto\n{limit} {share:.4f} {p99:.1f}\n\n\n")
    n = len(curves)
    fixed_lines = ", ".join(
        f"'{data}' index {i} using 1:{{col}} with linespoints lt {i + 1} pt 7 ps 0.5 "
        f"title '{title}'" for i, (title, _, _) in enumerate(curves))
    auto_points = ", ".join(
        f"'{data}' index {n + i} using 1:{{col}} with points lt {i + 1} pt 5 ps 1.5 notitle"
        for i in range(n))
    script = f"""
set terminal svg size 900,420 font 'sans,11'
set output '{os.path.join(out, "limit_sweep.svg")}'
set multiplot layout 1,2 title 'Fixed limits (lines) and auto (squares, at the limit it ended at), 4K randread / 1M read, 1 connection'
set logscale x 2
set xlabel 'in-flight limit'
set key bottom right font ',9'
set ylabel 'throughput / best fixed'
set yrange [0:1.1]
plot {fixed_lines.format(col=2)}, {auto_points.format(col=2)}
set logscale y
set yrange [*:*]
set ylabel 'p99 µs (auto: staged-to-reply)'
set key top left font ',9'
plot {fixed_lines.format(col=3)}, {auto_points.format(col=3)}
unset multiplot
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=False)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/nbdring-limit")
