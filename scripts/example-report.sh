#!/usr/bin/env bash
# Regenerates results/quick/: the report of experiments/quick.toml on this machine (the README's
# example of what the harness produces).
#
#   scripts/example-report.sh            (runs quick.toml into runs/quick-example/, then copies)
#   scripts/example-report.sh DIR        (copies the report of an existing results folder DIR)
#
# Copied: report.md, report.html (self-contained) and the charts as PNG and SVG. The tables and
# raw records stay in the results folder.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DB=${DECODEBENCH:-$ROOT/target/release/decodebench}
cd "$ROOT"
if [[ ! -x $DB ]]; then
    cargo build --release --quiet
fi
SRC=${1:-}
if [[ -z $SRC ]]; then
    SRC=runs/quick-example
    rm -rf "$SRC"
    "$DB" run experiments/quick.toml --out "$SRC"
else
    "$DB" report "$SRC"
fi
DST=results/quick
rm -rf "$DST"
mkdir -p "$DST"
cp "$SRC/report.md" "$SRC/report.html" "$DST/"
cp -r "$SRC/charts" "$DST/"
echo "example report in $DST (from $SRC)"
