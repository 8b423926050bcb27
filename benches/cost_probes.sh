#!/bin/bash
# Instructions per call of examples/cost_probes.rs's probes, counted by callgrind
# (only inside each probe function), at the working tree and optionally at a second
# tree (a `git worktree` of a baseline commit; this tree's probe file is copied into it
# for the build if it has none), side by side:
#
#   bash benches/cost_probes.sh [BASELINE_TREE]
#
# With RUSTFLAGS="--cfg tokio_unstable" the tokio task probe runs under the task hooks.
# All features, as the tables quote. Needs valgrind. BENCHMARKS.md's isolation tables come from this.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
probe() { # TREE -> one "name count" line per probe
	local tree=$1 target copied=''
	target="$tree/target/cost-probes${RUSTFLAGS:+-cfg}"
	if [ ! -e "$tree/examples/cost_probes.rs" ]; then
		cp "$here/examples/cost_probes.rs" "$tree/examples/cost_probes.rs"
		copied=1
	fi
	(cd "$tree" && CARGO_TARGET_DIR="$target" cargo build -q --release \
		--example cost_probes --all-features)
	[ -z "$copied" ] || rm "$tree/examples/cost_probes.rs"
	local name calls ir
	for pair in set_reset:100000 scope_get:100000 wrapped_future:100000 poll_once:100000 \
		task_polls:101000 one_request:100000; do
		name=${pair%%:*}
		calls=${pair##*:}
		ir=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null \
			--toggle-collect="cost_probes::$name" "$target/release/examples/cost_probes" 2>&1 |
			awk '/Collected/ {print $4}')
		echo "$name $(awk -v ir="$ir" -v n="$calls" 'BEGIN {printf "%.1f", ir / n}')"
	done
}
if [ $# -ge 1 ]; then
	paste <(probe "$1") <(probe .) | awk '{printf "%-16s %10s %10s %6.3f\n", $1, $2, $4, $4 / $2}'
else
	probe .
fi
