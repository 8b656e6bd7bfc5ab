#!/bin/sh
# Runs inside the VM (tests/vm/vmkit.py): executes each job file the host drops into
# the shared directory $1, one at a time, each under its own hard timeout, and
# leaves its exit status beside it. Exits when the host writes "stop"; powers
# the VM off when the host stops renewing its lease (the test run was killed),
# so no qemu outlives it.
dir=$1
modprobe tun 2>/dev/null
(
  last=""; idle=0
  while :; do
    cur=$(cat "$dir/lease" 2>/dev/null)
    if [ "$cur" != "$last" ]; then last=$cur; idle=0; else idle=$((idle + 5)); fi
    if [ "$idle" -ge 90 ]; then
      echo "lease expired" > /dev/console
      echo o > /proc/sysrq-trigger
    fi
    sleep 5
  done
) &
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
  [ -e "$dir/stop" ] && exit 0
  sleep 0.2
done
