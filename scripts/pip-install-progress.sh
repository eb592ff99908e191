#!/bin/sh
# pip install with a line of progress every few seconds instead of a minute of silence; the
# full output goes to LOG. Usage: pip-install-progress.sh LOG PYTHON PIP-ARGS...
set -u
log=$1; shift
python=$1; shift
"$python" -m pip install --progress-bar off "$@" >> "$log" 2>&1 &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
    sleep 3
    if kill -0 "$pid" 2>/dev/null; then
        n=$(grep -c '^Collecting\|^Requirement already satisfied' "$log")
        last=$(grep '^Collecting\|^Installing\|^Building' "$log" | tail -n 1 | cut -c1-70)
        if [ "$n" -eq 0 ]; then
            echo "    ... preparing"
        else
            echo "    ... $n packages resolved${last:+; $last}"
        fi
    fi
done
if ! wait "$pid"; then
    cat "$log"
    echo "pip install failed; the log is $log" >&2
    exit 1
fi
