#!/usr/bin/env bash
# Runs every benchmark (import, delivery, console, re-fire, prune) and prints ONE table: each
# design §5 target beside the figure measured in this run. Each bench's full output is kept in
# target/bench-all/NAME.txt. The figures are read from the benches' own report lines, so a
# bench that changes its wording shows up here as "?".
#
#   scripts/bench.sh            # everything, full size (~15-25 min on 2 cores)
#   scripts/bench.sh --quick    # smaller sizes, for checking the script itself
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/bench-all
mkdir -p "$out"

quick=0
[[ "${1:-}" == "--quick" ]] && quick=1
args_import=() args_delivery=() args_console=() args_refire=() args_prune=()
if ((quick)); then
  args_import=(--items 100000 --assign 10000)
  args_delivery=(--deliveries 5000 --samples 40)
  args_console=(--items 100000 --attempts 500000 --db "$out/console-quick.db")
  args_refire=(--deliveries 10000)
  args_prune=(--attempts 500000)
fi

cargo bench --no-run --bench import --bench delivery --bench console --bench refire --bench prune >/dev/null 2>&1 \
  || cargo bench --no-run --bench import --bench delivery --bench console --bench refire --bench prune

run() { # NAME ARGS...
  local name=$1
  shift
  echo "running $name…" >&2
  local t0=$SECONDS
  cargo bench -q --bench "$name" -- "$@" >"$out/$name.txt" 2>&1 || echo "($name failed: see $out/$name.txt)" >&2
  echo "  $name took $((SECONDS - t0)) s" >&2
}
run import "${args_import[@]}"
run delivery "${args_delivery[@]}"
run console "${args_console[@]}"
run refire "${args_refire[@]}"
run prune "${args_prune[@]}"

# The value after a row's label: the text between the label and two or more spaces (or |).
field() { # FILE REGEX [AWK FIELD SPEC]
  local line
  line=$(grep -E -m1 -- "$2" "$out/$1.txt" 2>/dev/null || true)
  [[ -z "$line" ]] && { echo "?"; return; }
  echo "$line"
}
# Cells of a fixed-width row: everything after the label, squeezed.
after() { # FILE LABEL
  local line
  line=$(grep -F -m1 -- "$2" "$out/$1.txt" 2>/dev/null || true)
  [[ -z "$line" ]] && { echo "?"; return; }
  line=${line#*"$2"}
  echo "$line" | sed -E 's/^[ |]+//; s/ *\|? *$//; s/ {2,}/  /g'
}
first_cell() { after "$1" "$2" | awk -F'  ' '{print $1}'; }

rows=()
add() { rows+=("$1|$2|$3"); }

add "import: parse + import of 1M items" "$(first_cell import 'parse + import')" "< 30 s"
add "import: longest write hold / other writer's worst wait" "$(first_cell import 'during import') / $(after import 'during import' | awk -F'  ' '{print $2}')" "~100 ms"
add "import: bulk assign 100k" "$(first_cell import 'bulk assign')" "seconds"
add "delivery: plain keep-alive POSTs (baseline)" "$(first_cell delivery '(a) baseline')" ""
add "delivery: engine, every attempt durable" "$(first_cell delivery '(b) engine')" ""
add "delivery: engine / baseline" "$(first_cell delivery 'engine / baseline')" ">= 0.50"
add "delivery: idle latency, same process" "$(first_cell delivery 'idle latency, same process' | sed -E 's/^\(n=[0-9]+\) *//')" "p99 < 50 ms"
add "delivery: idle latency, other process" "$(first_cell delivery 'idle latency, other process' | sed -E 's/^\(n=[0-9]+\) *//')" "p99 < 50 ms"
add "console: first frame (1M items, 5M attempts)" "$(first_cell console 'first frame')" "< 300 ms"
add "console: key press → frame, p99" "$(first_cell console 'key press → frame, p99')" "< 16 ms"
add "console: peak RSS" "$(first_cell console 'peak RSS')" "< 100 MB"
add "console: frames/s while 5,000 attempts/s stream" "$(first_cell console 'frames/s while attempts stream in')" ">= 20"
add "console: attempts/s written / ingested" "$(first_cell console 'attempts/s written / ingested')" "5000"
add "re-fire: bulk re-fire of 100,000 failed" "$(first_cell refire 'bulk re-fire of')" "seconds (< 10 s)"
add "re-fire: longest write transaction" "$(first_cell refire 'longest write transaction')" "< 100 ms"
add "re-fire: other writer's worst wait" "$(first_cell refire "other writer's wait for the lock, worst")" "< 100 ms"
add "prune: 5M attempts, 30-day cutoff" "$(after prune 'prune time')" ""
add "prune: longest write-lock hold" "$(after prune 'longest write-lock hold')" "~100 ms"
add "prune: reader worst / p99 during prune" "$(after prune 'reader worst / p99, during prune')" ""

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
