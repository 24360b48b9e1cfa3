#!/usr/bin/env bash
# demo.sh (make demo): checkpoint a counting process through the pipe, kill
# it, restore it from the image, and watch it count on with the same PID.
#
#   scripts/demo.sh [BINDIR]     (default bin/, as built by make)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(cd "${1:-bin}" && pwd)
export PATH="$bin:$PATH"

for c in cr-dump cr-freeze cr-seize cr-parasite cr-pages cr-files cr-tcp cr-restore crit test/demo-counter; do
	if [ ! -x "$bin/$c" ]; then
		echo "demo: $bin/$c is missing: run make (is cmd/$c written yet?)" >&2
		exit 1
	fi
done

if [ -t 1 ]; then bold=$'\e[1m' off=$'\e[0m'; else bold= off=; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$off"; }
show() { printf '$ %s\n' "$*"; }

work=$(mktemp -d /tmp/crpipe-demo.XXXXXX)
log=$work/counter.log
img=$work/counter.img
pid=
stop() {
	# Only the demo's own counter, checked by name before it is signalled.
	if [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = demo-counter ]; then
		kill "$pid"
	fi
}
trap stop EXIT

step "Start a counter that appends a line to a log every half second"
show "demo-counter $log &"
"$bin/test/demo-counter" "$log" &
pid=$!
disown "$pid" # bash still reaps it, without a "Killed" notice when the dump ends it
sleep 2.2
show "tail -n 3 $log"
tail -n 3 "$log"

step "Checkpoint it: cr-dump runs cr-freeze --pid $pid | cr-seize | cr-parasite | cr-files | cr-tcp | cr-pages, the stages in its own process"
echo "   and kills the process only once the image is complete and synced"
show "cr-dump -t $pid -o $img"
cr-dump -t "$pid" -o "$img"
ls -lh "$img" | awk '{print "   image: " $5 "B in " $9}'
for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
if [ -d "/proc/$pid" ]; then echo "   pid $pid still exists?"; else echo "   pid $pid is gone"; fi

step "What the image holds"
show "crit show $img | head -n 30"
crit show "$img" >"$work/show.txt"
head -n 30 "$work/show.txt"

step "Meanwhile the log stands still"
sleep 1
show "tail -n 2 $log"
tail -n 2 "$log"

step "Restore it from the image"
show "cr-restore -d -i $img --pidfile $work/pid"
cr-restore -d -i "$img" --pidfile "$work/pid"
echo "   restored as pid $(cat "$work/pid") (dumped as $pid)"
sleep 2.2
show "tail -n 6 $log"
tail -n 6 "$log"

step "Stop it"
show "kill $pid"
stop
pid=
echo
echo "The image stays in $work; look inside with: crit show $img"
