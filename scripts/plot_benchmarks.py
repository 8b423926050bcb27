#!/usr/bin/env python3
"""Plots get and set cost against context size, for us and each peer, from criterion's
saved estimates (python3 standard library only; the SVG is written by hand).

    cargo bench --all-features --bench ops --bench propagation --bench peers \\
        -- --warm-up-time 1 --measurement-time 2
    python3 scripts/plot_benchmarks.py             # writes benches/plots/{get,set}.svg
    python3 scripts/plot_benchmarks.py --markdown  # also prints every median as tables

It reads `<criterion dir>/**/new/estimates.json` (the median point estimate, in ns) and
the `benchmark.json` beside it (group, function and size of the row). The criterion
directory is `$CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`, else
`target/criterion`, as in `benches/support/summary.rs`. The plotted rows are the ones
`benches/peers.rs` writes: groups `peers_get` and `peers_set`, functions with a size
parameter are lines, functions without one (the `thread_local!` and `task_local!`
floors) are horizontal dashed lines.
"""

import argparse
import json
import math
import os
import sys
from datetime import datetime
from pathlib import Path

# (function id in the group, legend label, colour, dash pattern, stroke width)
GET_SERIES = [
    ("contextvars", "contextvars: VAR.get()", "#d62728", "", 3.0),
    ("otel_current_get", "opentelemetry: Context::current() + get", "#1f77b4", "", 2.0),
    ("otel_map_current_get", "opentelemetry: map_current + get", "#17becf", "6 3", 2.0),
    ("imbl_tls", "imbl HashMap in a thread_local! RefCell", "#2ca02c", "", 2.0),
    ("rwlock_hashmap", "global RwLock<HashMap>", "#9467bd", "", 2.0),
    ("thread_local", "thread_local! Cell (no map)", "#7f7f7f", "2 4", 1.5),
    ("tokio_task_local", "tokio task_local! get (no map)", "#ff7f0e", "8 4", 1.5),
]

SET_SERIES = [
    ("contextvars_set_reset_private", "contextvars: set + reset, private frame", "#d62728",
     "", 3.0),
    ("contextvars_set_reset", "contextvars: set + reset, observed context object",
     "#e377c2", "6 3", 2.0),
    ("otel_attach", "opentelemetry: current_with_value().attach()", "#1f77b4", "", 2.0),
    ("imbl_tls_insert_restore", "imbl thread_local: insert + restore", "#2ca02c", "", 2.0),
    ("imbl_insert", "imbl: persistent insert (clone + insert)", "#8c564b", "6 3", 2.0),
    ("rwlock_hashmap_insert_restore", "global RwLock<HashMap>: insert + restore",
     "#9467bd", "", 2.0),
]


def criterion_dir():
    if os.environ.get("CRITERION_HOME"):
        return Path(os.environ["CRITERION_HOME"])
    return Path(os.environ.get("CARGO_TARGET_DIR", "target")) / "criterion"


def load(root, since=None):
    """{(group, function, size or None): median ns} for every saved `new` estimate
    (written at or after `since`, a POSIX time, if given)."""
    rows = {}
    for estimates in sorted(root.glob("**/new/estimates.json")):
        if since is not None and estimates.stat().st_mtime < since:
            continue
        meta_path = estimates.with_name("benchmark.json")
        try:
            meta = json.loads(meta_path.read_text())
            median = json.loads(estimates.read_text())["median"]["point_estimate"]
        except (OSError, ValueError, KeyError) as error:
            print(f"skipping {estimates}: {error}", file=sys.stderr)
            continue
        size = meta.get("value_str")
        size = int(size) if size is not None and size.isdigit() else size
        rows[(meta["group_id"], meta["function_id"], size)] = float(median)
    return rows


def fmt_ns(value):
    if value >= 1e5:
        return f"{value / 1e6:.2f} ms"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def esc(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def plot(rows, group, series, title, path):
    """Writes one log-log SVG chart of `group`'s rows."""
    lines = []  # (label, colour, dash, width, [(size, ns)]) with sizes, or [(None, ns)]
    for function, label, colour, dash, width in series:
        points = sorted(
            (size, ns)
            for (g, f, size), ns in rows.items()
            if g == group and f == function and isinstance(size, int)
        )
        flat = rows.get((group, function, None))
        if points:
            lines.append((label, colour, dash, width, points))
        elif flat is not None:
            label = f"{label}: {fmt_ns(flat)} ns"
            lines.append((label, colour, dash, width, [(None, flat)]))
        else:
            print(f"{group}/{function}: no saved estimate, left out", file=sys.stderr)
    if not lines:
        raise SystemExit(f"no rows of group {group} under the criterion directory")

    sizes = sorted({s for *_, pts in lines for s, _ in pts if s is not None})
    values = [ns for *_, pts in lines for _, ns in pts]
    x_min, x_max = min(sizes), max(sizes)
    y_lo = 10 ** math.floor(math.log10(min(values)))
    y_hi = 10 ** math.ceil(math.log10(max(values)))

    width, height = 940, 480
    left, right, top, bottom = 70, 360, 50, 60
    plot_w, plot_h = width - left - right, height - top - bottom

    def x_of(size):
        span = math.log10(x_max) - math.log10(x_min) or 1.0
        return left + (math.log10(size) - math.log10(x_min)) / span * plot_w

    def y_of(ns):
        span = math.log10(y_hi) - math.log10(y_lo)
        return top + plot_h - (math.log10(ns) - math.log10(y_lo)) / span * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left + plot_w / 2}" y="24" text-anchor="middle" font-size="15" '
        f'font-weight="bold">{esc(title)}</text>',
    ]
    # Horizontal grid: every decade labelled, 2 and 5 lighter.
    decade = y_lo
    while decade <= y_hi * 1.0001:
        for mult in (1, 2, 5):
            ns = decade * mult
            if ns > y_hi * 1.0001:
                break
            y = y_of(ns)
            strong = mult == 1
            out.append(
                f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                f'stroke="{"#bbbbbb" if strong else "#e8e8e8"}" stroke-width="1"/>'
            )
            label = f"{ns:,g}" if ns < 1e6 else f"{ns:.0e}"
            out.append(
                f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" '
                f'fill="{"#000" if strong else "#888"}">{label}</text>'
            )
        decade *= 10
    # Vertical grid at the measured sizes.
    for size in sizes:
        x = x_of(size)
        out.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" '
            f'stroke="#e8e8e8" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 18}" text-anchor="middle">{size:,}</text>'
        )
    # Axes and their labels.
    out.append(
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
        f'stroke="#333" stroke-width="1"/>'
    )
    out.append(
        f'<text x="{left + plot_w / 2}" y="{height - 16}" text-anchor="middle">'
        f"context size: other values bound before the one used (log scale)</text>"
    )
    out.append(
        f'<text transform="translate(18 {top + plot_h / 2}) rotate(-90)" '
        f'text-anchor="middle">median ns per operation (log scale; lower is better)</text>'
    )
    # Series.
    for label, colour, dash, stroke, points in lines:
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        if points[0][0] is None:
            y = y_of(points[0][1])
            out.append(
                f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                f'stroke="{colour}" stroke-width="{stroke}"{dash_attr}/>'
            )
            continue
        coords = " ".join(f"{x_of(s):.1f},{y_of(ns):.1f}" for s, ns in points)
        out.append(
            f'<polyline points="{coords}" fill="none" stroke="{colour}" '
            f'stroke-width="{stroke}"{dash_attr}/>'
        )
        for s, ns in points:
            out.append(
                f'<circle cx="{x_of(s):.1f}" cy="{y_of(ns):.1f}" r="3.5" fill="{colour}">'
                f"<title>{esc(label)}: {fmt_ns(ns)} ns at size {s:,}</title></circle>"
            )
    # Legend, right of the plot.
    lx, ly = left + plot_w + 20, top + 10
    for i, (label, colour, dash, stroke, points) in enumerate(lines):
        y = ly + i * 22
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(
            f'<line x1="{lx}" y1="{y}" x2="{lx + 28}" y2="{y}" stroke="{colour}" '
            f'stroke-width="{stroke}"{dash_attr}/>'
        )
        out.append(f'<text x="{lx + 36}" y="{y + 4}">{esc(label)}</text>')
    out.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")
    print(f"wrote {path}")


SIZES = [1, 8, 64, 1024]


def comparisons():
    """(our row, the peer's row) pairs, rows as (group, function, size or None)."""
    pairs = []
    for n in SIZES:
        ours = ("peers_get", "contextvars", n)
        for peer in ["tokio_task_local", "thread_local"]:
            pairs.append((ours, ("peers_get", peer, None)))
        for peer in ["otel_current_get", "otel_map_current_get", "imbl_tls", "rwlock_hashmap"]:
            pairs.append((ours, ("peers_get", peer, n)))
    # `get` in each frame kind: `Context::run`, the thread's own context, a poll, a job.
    for function in ["contextvars", "contextvars_own", "contextvars_poll", "contextvars_job",
                     "contextvars_with"]:
        for n in [1, 3, 4, 8, 15, 64, 1024]:
            pairs.append((("get", function, n), ("get", "tokio_task_local", None)))
    for n in [1, 1024]:
        pairs.append((("get", "contextvars_miss_default", n), ("get", "tokio_task_local", None)))
    for n in SIZES:
        for function in ["contextvars_set_reset_private", "contextvars_scoped_set_private",
                         "contextvars_set_reset", "contextvars_scoped_set"]:
            ours = ("peers_set", function, n)
            for peer in ["otel_attach", "imbl_insert", "imbl_tls_insert_restore",
                         "rwlock_hashmap_insert_restore"]:
                pairs.append((ours, ("peers_set", peer, n)))
        for function in ["contextvars_scoped_set_private", "contextvars_set_reset_private"]:
            pairs.append((("peers_set", function, n), ("peers_run", "tokio_sync_scope", None)))
        pairs.append((("set_reset", "contextvars_private", n), ("peers_set", "otel_attach", n)))
        pairs.append((("set_reset", "contextvars", n), ("peers_set", "otel_attach", n)))
    for n in SIZES + [100_000]:
        ours = ("peers_copy", "contextvars", n)
        pairs.append((ours, ("peers_copy", "arc_clone", None)))
        if n != 100_000:
            pairs.append((ours, ("peers_copy", "otel_current", n)))
        pairs.append((ours, ("peers_copy", "imbl_tls_clone", n)))
    pairs.append((("peers_copy", "contextvars", 100_000), ("peers_copy", "contextvars", 1)))
    for n in [1, 100_000]:
        pairs.append((("copy_context", "contextvars", n), ("copy_context", "arc_clone", None)))
    pairs.append((("copy_context", "contextvars", 100_000), ("copy_context", "contextvars", 1)))
    for n in SIZES:
        ours = ("peers_run", "contextvars", n)
        pairs.append((ours, ("peers_run", "tokio_sync_scope", None)))
        pairs.append((ours, ("peers_run", "otel_attach", n)))
    pairs.append((("run", "contextvars_empty_closure", None), ("peers_run", "tokio_sync_scope", None)))
    for n in SIZES:
        pairs.append((("peers_with_value", "contextvars", n), ("peers_with_value", "otel", n)))
    for n in [1, 64]:
        ours = ("peers_poll", "contextvars", n)
        for peer in ["bare", "tokio_task_local"]:
            pairs.append((ours, ("peers_poll", peer, None)))
        pairs.append((ours, ("peers_poll", "otel_with_context", n)))
        for peer in ["bare", "tokio_task_local"]:
            pairs.append((("poll", "ours", n), ("poll", peer, None)))
    for group in ["rayon_join", "rayon_join_one_worker"]:
        pairs.append(((group, "ours", None), (group, "plain", None)))
    pairs.append((("par_iter", "ours", None), ("par_iter", "thread_local", None)))
    for function in ["contextvars_get_threads", "contextvars_copy_context_threads",
                     "arc_clone_threads"]:
        pairs.append((("peers_scaling", function, 2), ("peers_scaling", function, 1)))
    return pairs


def row_name(row):
    group, function, size = row
    return f"{group}/{function}" + ("" if size is None else f"/{size}")


def markdown(rows):
    """Every comparison (ours, the peer, the ratio), then every saved row as one table
    per group: size down, function across."""
    print("\n| our row | ns | peer row | ns | ours / peer |")
    print("|---|---:|---|---:|---:|")
    for ours, peer in comparisons():
        a, b = rows.get(ours), rows.get(peer)
        if a is None or b is None:
            continue
        print(f"| `{row_name(ours)}` | {fmt_ns(a)} | `{row_name(peer)}` | {fmt_ns(b)} "
              f"| {a / b:.2f}x |")
    groups = sorted({g for g, _, _ in rows})
    for group in groups:
        functions = sorted({f for g, f, _ in rows if g == group})
        sizes = sorted(
            {s for g, _, s in rows if g == group},
            key=lambda s: (s is not None, s if isinstance(s, int) else -1, str(s)),
        )
        print(f"\n#### `{group}`\n")
        print("| size | " + " | ".join(f"`{f}`" for f in functions) + " |")
        print("|---:|" + "---:|" * len(functions))
        for size in sizes:
            cells = []
            for function in functions:
                ns = rows.get((group, function, size))
                cells.append(fmt_ns(ns) if ns is not None else "")
            label = "-" if size is None else f"{size:,}" if isinstance(size, int) else size
            print(f"| {label} | " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--criterion", type=Path, default=criterion_dir(),
                        help="criterion's output directory (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("benches/plots"),
                        help="where the SVGs go (default: %(default)s)")
    parser.add_argument("--since", type=datetime.fromisoformat,
                        help="only rows saved at or after this time (ISO 8601, e.g. "
                        "2026-11-24T07:59:29+00:00): leaves out other runs' rows")
    parser.add_argument("--markdown", action="store_true",
                        help="also print every saved median as markdown tables")
    args = parser.parse_args()
    rows = load(args.criterion, args.since.timestamp() if args.since else None)
    if not rows:
        raise SystemExit(f"no estimates under {args.criterion}: run the benches first")
    plot(rows, "peers_get", GET_SERIES,
         "get: read the last-bound value (median ns, lower is better)",
         args.out / "get.svg")
    plot(rows, "peers_set", SET_SERIES,
         "set: bind a value and restore the previous state (median ns)",
         args.out / "set.svg")
    if args.markdown:
        markdown(rows)


if __name__ == "__main__":
    main()
