#!/usr/bin/env python3
"""Runs criterion bench binaries in several fresh processes and reports, per row, the
spread of criterion's middle estimate across the processes (python3 standard library).

A read's cost can depend on where the loader put the thread-local block (which cache
lines the thread's state falls on), and that changes from one process to the next, so
one process says little about the next. This runs each binary `--processes` times,
interleaved (a, b, a, b, ...), each process measuring the rows `--filter` selects, and
prints min / median / max per row and binary.

    cargo bench --all-features --bench ops --no-run      # note the executable's path
    python3 scripts/spread.py --processes 10 \\
        --filter '^get/(contextvars|contextvars_own|contextvars_poll|contextvars_job)/8$|^get/tokio_task_local$' \\
        before=/path/to/old/ops-hash after=target/release/deps/ops-hash

Each binary is given as `label=path` (or just a path). Criterion options for a short
run (`--warm-up-time 1 --measurement-time 2`) are passed unless `--criterion-args`
says otherwise.
"""

import argparse
import re
import statistics
import subprocess
import sys

TIME = re.compile(r"time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]")
UNITS = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}


def measure(path, row_filter, criterion_args):
    """One process: {row: middle estimate in ns}."""
    out = subprocess.run(
        [path, "--bench", "--noplot", *criterion_args, row_filter],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows, name = {}, None
    for line in out.splitlines():
        match = TIME.search(line)
        head = line.split("time:")[0].strip()
        if head:
            name = head
        if match and name:
            rows[name] = float(match.group(1)) * UNITS[match.group(2)]
            name = None
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binaries", nargs="+", help="label=path or path")
    parser.add_argument("--filter", required=True, help="criterion row filter (regex)")
    parser.add_argument("--processes", type=int, default=10)
    parser.add_argument(
        "--criterion-args",
        default="--warm-up-time 1 --measurement-time 2",
        help="options passed to every process",
    )
    args = parser.parse_args()
    binaries = [b.split("=", 1) if "=" in b else (b, b) for b in args.binaries]
    results = {label: {} for label, _ in binaries}
    for i in range(args.processes):
        for label, path in binaries:
            for row, ns in measure(path, args.filter, args.criterion_args.split()).items():
                results[label].setdefault(row, []).append(ns)
        print(f"process {i + 1}/{args.processes} done", file=sys.stderr)
    print(f"| row | binary | processes | min ns | median ns | max ns | max/min |")
    print("|---|---|---:|---:|---:|---:|---:|")
    rows = sorted({row for per in results.values() for row in per})
    for row in rows:
        for label, _ in binaries:
            values = results[label].get(row)
            if not values:
                continue
            lo, mid, hi = min(values), statistics.median(values), max(values)
            print(
                f"| `{row}` | {label} | {len(values)} | {lo:.2f} | {mid:.2f} | {hi:.2f} | {hi / lo:.2f} |"
            )


if __name__ == "__main__":
    main()
