#!/bin/sh
# Runs inside the VM (tests/vm/vmkit.py): executes each job file the host drops into
# the shared directory $1, one at a time, each under its own hard timeout, and
# leaves its exit status beside it. Exits when the host writes "stop".
dir=$1
modprobe tun 2>/dev/null
echo up > "$dir/ready"
while :; do
  for f in "$dir"/*.job; do
    [ -e "$f" ] || continue
    n=${f%.job}
    t=$(cat "$n.timeout" 2>/dev/null || echo 300)
    mv "$f" "$n.run"
    timeout -k 5 "$t" sh "$n.run" > "$n.out" 2> "$n.err"
    echo $? > "$n.rc.tmp"
    mv "$n.rc.tmp" "$n.rc"
  done
  [ -e "$dir/stop" ] && { sync; poweroff -f 2>/dev/null; exit 0; }
  sleep 0.2
done
