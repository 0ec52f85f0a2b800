#!/usr/bin/env bash
# Runs every benchmark (import, delivery, console, re-fire, prune, postgres) and prints ONE table: each
# design §5 target beside the figure measured in this run. Each bench's full output is kept in
# target/bench-all/NAME.txt. The figures are read from the benches' own report lines, so a
# bench that changes its wording shows up here as "?".
#
#   scripts/bench.sh            # everything, full size (~15-25 min on 2 cores)
#   scripts/bench.sh --quick    # smaller sizes, for checking the script itself
#   ONLY="console refire" scripts/bench.sh   # re-run some; reuse the others' last reports
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/bench-all
mkdir -p "$out"

quick=0
[[ "${1:-}" == "--quick" ]] && quick=1
args_import=() args_import_v7=() args_delivery=() args_console=() args_refire=() args_prune=()
args_postgres=() args_scale=()
if ((quick)); then
  args_import=(--items 100000 --assign 10000)
  args_import_v7=(--items 100000)
  args_delivery=(--deliveries 5000 --samples 40)
  args_console=(--items 100000 --attempts 500000 --db "$out/console-quick.db")
  args_refire=(--deliveries 10000)
  args_prune=(--attempts 500000)
  args_postgres=(--deliveries 2000 --samples 40)
  args_scale=(--seconds 3)
fi

benches=(--bench import --bench delivery --bench console --bench refire --bench prune --bench postgres)
cargo bench --no-run "${benches[@]}" >/dev/null 2>&1 || cargo bench --no-run "${benches[@]}"

run() { # NAME ARGS...
  local name=$1
  shift
  echo "running $name…" >&2
  local t0=$SECONDS
  cargo bench -q --bench "$name" -- "$@" >"$out/$name.txt" 2>&1 || echo "($name failed: see $out/$name.txt)" >&2
  echo "  $name took $((SECONDS - t0)) s" >&2
}
# ONLY="console refire" re-runs some and reuses the others' last reports.
only=" ${ONLY:-import delivery console refire prune postgres} "
[[ $only == *" import "* ]] && run import "${args_import[@]}"
# V7-shaped lines through the real binary (issue 22): its own report file.
if [[ $only == *" import "* ]]; then
  echo "running import --shape mixed…" >&2
  t0=$SECONDS
  cargo bench -q --bench import -- --shape mixed "${args_import_v7[@]}" >"$out/import-v7.txt" 2>&1 \
    || echo "(import --shape mixed failed: see $out/import-v7.txt)" >&2
  echo "  import --shape mixed took $((SECONDS - t0)) s" >&2
  # The worst case: random item ids (bound by the disk, see README).
  echo "running import --shape mixed --ids random…" >&2
  t0=$SECONDS
  cargo bench -q --bench import -- --shape mixed --ids random "${args_import_v7[@]}" \
    >"$out/import-v7-random.txt" 2>&1 \
    || echo "(import --shape mixed --ids random failed: see $out/import-v7-random.txt)" >&2
  echo "  import --shape mixed --ids random took $((SECONDS - t0)) s" >&2
fi
[[ $only == *" delivery "* ]] && run delivery "${args_delivery[@]}"
[[ $only == *" console "* ]] && run console "${args_console[@]}"
[[ $only == *" refire "* ]] && run refire "${args_refire[@]}"
[[ $only == *" prune "* ]] && run prune "${args_prune[@]}"
# PostgreSQL (issue 17): throughput and latency, then scale-out on both backends.
if [[ $only == *" postgres "* ]]; then
  run postgres "${args_postgres[@]}"
  echo "running postgres --scale-out…" >&2
  t0=$SECONDS
  cargo bench -q --bench postgres -- --scale-out "${args_scale[@]}" >"$out/postgres-scale.txt" 2>&1 \
    || echo "(postgres --scale-out failed: see $out/postgres-scale.txt)" >&2
  echo "  postgres --scale-out took $((SECONDS - t0)) s" >&2
fi

# The figure on a report row: the first cell after a label (a Perl regex matched at the start
# of the line, after any `|`); cells are separated by two or more spaces or by `|`.
val() { # NAME LABEL_REGEX
  perl -ne 'BEGIN { $re = shift @ARGV } if (s/^[\s|]*(?:$re)[\s|]*//) { s/\s*\|?\s*$//; ($c) = split /\s{2,}|\s*\|\s*/; print $c; $f = 1; exit } END { print "?" unless $f }' \
    "$2" "$out/$1.txt" 2>/dev/null || echo "?"
}

rows=()
add() { rows+=("$1|$2|$3"); }

add "import: parse + import of 1M items" "$(val import 'parse \+ import')" "< 30 s"
add "import: longest write hold during import" "$(val import 'during import')" "~100 ms"
add "import: bulk assign of 100,000" "$(val import 'bulk assign(?! of)')" "seconds"
add "import: 1M V7-shaped lines (mixed, time-ordered ids), hookops item import" "$(val import-v7 'hookops item import \(mixed\)')" "< 45 s"
add "import: 1M V7-shaped lines (mixed), random ids" "$(val import-v7-random 'hookops item import \(mixed\)')" ""
add "import: V7-shaped, baseline serde_json + raw insert" "$(val import-v7 'baseline: serde_json \+ raw insert')" ""
add "import: V7-shaped, peak RSS" "$(val import-v7 'peak RSS of the import')" "< 300 MB"
add "import: V7-shaped, longest write hold (probe wait)" "$(val import-v7 'longest write hold \(probe wait\)')" "~100 ms"
add "delivery: plain keep-alive POSTs (baseline, same run)" "$(val delivery '\(a\) baseline: keep-alive POSTs')" ""
add "delivery: engine, every attempt durable" "$(val delivery '\(b\) engine: deliveries, every attempt durable')" ""
add "delivery: engine / baseline" "$(val delivery 'engine / baseline')" ">= 0.50"
add "delivery: ratio at the baseline's core use (CPU per request / per delivery)" "$(val delivery "ratio at the baseline's core use")" ""
add "delivery: idle latency, same process" "$(val delivery '\(c\) idle latency, same process \(n=\d+\)')" "p99 < 50 ms"
add "delivery: idle latency, other process" "$(val delivery 'idle latency, other process \(n=\d+\)')" "p99 < 50 ms"
add "console: first frame (1M items, 5M attempts)" "$(val console 'first frame \(open \+ load \+ draw\)')" "< 300 ms"
add "console: key press → frame, p99" "$(val console 'key press → frame, p99')" "< 16 ms"
add "console: peak RSS" "$(val console 'peak RSS')" "< 100 MB"
add "console: frames/s while 5,000 attempts/s stream in" "$(val console 'frames/s while attempts stream in')" ">= 20"
add "console: attempts/s written / ingested" "$(val console 'attempts/s written / ingested')" "5000"
add "re-fire: bulk re-fire of 100,000 failed deliveries" "$(val refire 'bulk re-fire of \d+ \(list \+ re-fire\)')" "seconds (< 10 s)"
add "re-fire: longest write transaction" "$(val refire 'longest write transaction \(\d+ transactions\)')" "< 100 ms"
add "re-fire: another writer's worst wait for the lock" "$(val refire "other writer's wait for the lock, worst \\(n=\\d+\\)")" "< 100 ms"
add "prune: 5M attempts, 30-day cutoff" "$(val prune 'prune time')" ""
add "prune: longest write-lock hold" "$(val prune 'longest write-lock hold \(Store::writer_stats\)')" "~100 ms"
add "prune: another writer's worst / p99 wait during prune" "$(val prune 'other-process write wait worst / p99, during prune')" ""
add "PostgreSQL: keep-alive POSTs (baseline, same run)" "$(val postgres '\(a\) baseline: keep-alive POSTs')" ""
add "PostgreSQL: engine, every attempt durable" "$(val postgres '\(b\) engine on PostgreSQL, every attempt durable')" ""
add "PostgreSQL: engine / baseline" "$(val postgres 'engine / baseline')" ">= 0.10"
add "PostgreSQL: idle latency across processes" "$(val postgres '\(c\) idle latency, across processes \(n=\d+\)')" "p99 < 50 ms"
for row in "SQLite, 1 serve × 64" "SQLite, 1 serve × 128" "SQLite, 1 serve × 256" \
  "PostgreSQL, 1 serve × 64" "PostgreSQL, 2 serve × 64" "PostgreSQL, 4 serve × 64"; do
  add "scale-out (receiver 100 ms): $row" "$(val postgres-scale "scale-out $row")" ">= 0.90 of the limit"
done

cores=$(nproc 2>/dev/null || echo "?")
echo
echo "hookops benchmarks · $(date -u +%Y-%m-%d) · ${cores} cores$( ((quick)) && echo ' · QUICK sizes')"
echo
echo "| measure | measured | target |"
echo "|---|---|---|"
for r in "${rows[@]}"; do
  IFS='|' read -r a b c <<<"$r"
  echo "| $a | $b | $c |"
done
