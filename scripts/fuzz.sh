#!/usr/bin/env bash
# fuzz.sh runs every `go test -fuzz` target in the module for a short while
# (FUZZTIME each, default 10s). New failing inputs land in the package's
# testdata/fuzz/ as go test writes them; commit them with the fix.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-10s}
n=0
while IFS= read -r file; do
	dir=$(dirname "$file")
	for fn in $(grep -oE '^func Fuzz[A-Za-z0-9_]*' "$file" | sed 's/^func //'); do
		echo "== $dir $fn ($fuzztime)"
		go test -run='^$' -fuzz="^${fn}\$" -fuzztime="$fuzztime" "./$dir"
		n=$((n + 1))
	done
done < <(grep -rlE --include='*_test.go' '^func Fuzz' . | sed 's|^\./||' | sort)
echo "fuzz: $n targets ran for $fuzztime each"
