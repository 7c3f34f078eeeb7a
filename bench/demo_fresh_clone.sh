#!/usr/bin/env bash
# `make demo` as a new user would run it: a fresh clone, no virtual environment, an empty GALEN_HOME; every output
# line prefixed with the seconds since the start (bench/README.md's demo table is read from this log).
#   bash bench/demo_fresh_clone.sh [repository, default: this one] > demo.log 2>&1
set -u
SRC=${1:-$(cd "$(dirname "$0")/.." && pwd)}
WORK=$(mktemp -d /tmp/galen-demo-XXXXXX)
git clone -q "$SRC" "$WORK/clone"
cd "$WORK/clone" || exit 1
export GALEN_HOME="$WORK/home" RAY_AUTH_MODE=disabled WANDB_MODE=offline
start=$(date +%s.%N)
make demo 2>&1 | while IFS= read -r line; do
    awk -v now="$(date +%s.%N)" -v start="$start" -v line="$line" 'BEGIN { printf "%7.1f %s\n", now - start, line }'
done
status=${PIPESTATUS[0]}
echo "exit $status; clone and GALEN_HOME in $WORK"
exit "$status"
