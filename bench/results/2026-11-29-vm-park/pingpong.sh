#!/bin/bash
# Busy connections: server CPU per echoed message under a closed-loop ping-pong, parked vs unparked,
# run alternately (issue 14). Like bench/results/2026-11-29-vm-machine/mw.sh, plus the parks counter
# (a busy connection must never park) and perf stat's io_uring_enter count.
# usage: pingpong.sh ROUNDS "name=server args" ...
# env: BIN (ringhold), CLIENT (bench-client), CONNS (500), SIZE (128), DUR (5)
ROUNDS=$1; shift
BIN=${BIN:-./target/release/ringhold}
CLIENT=${CLIENT:-./bench/peers/target/release/bench-client}
CONNS=${CONNS:-500}; SIZE=${SIZE:-128}; DUR=${DUR:-5}
PORT=7851
for r in $(seq 1 "$ROUNDS"); do
  for cfg in "$@"; do
    NAME=${cfg%%=*}; ARGS=${cfg#*=}
    $BIN serve --listen 127.0.0.1:$PORT --metrics-listen 127.0.0.1:$((PORT+1)) --no-pin --idle-timeout 0 $ARGS > /tmp/pp-srv.log 2>&1 &
    SP=$!
    sleep 0.7
    perf stat -e syscalls:sys_enter_io_uring_enter,context-switches -p $SP -o /tmp/pp-perf.txt -- sleep $((DUR+1)) &
    PP=$!
    T0=$(awk '{print $14+$15}' /proc/$SP/stat)
    $CLIENT --target 127.0.0.1:$PORT --connections $CONNS --message-size $SIZE --duration $DUR --mode pingpong > /tmp/pp-out.json 2>/dev/null
    T1=$(awk '{print $14+$15}' /proc/$SP/stat)
    wait $PP
    sleep 1.2
    PARKS=$(curl -s http://127.0.0.1:$((PORT+1))/metrics | awk '/^ringhold_parks_total/{s+=$2} END{print s+0}')
    kill $SP; wait $SP 2>/dev/null
    python3 - "$NAME" "$r" $T0 $T1 "$PARKS" <<'PY'
import json, re, sys, os
name, rnd, t0, t1, parks = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
j = json.load(open('/tmp/pp-out.json'))
msgs = j.get('messages') or 0
perf = open('/tmp/pp-perf.txt').read()
enters = re.search(r'([\d,]+)\s+syscalls:sys_enter_io_uring_enter', perf)
cs = re.search(r'([\d,]+)\s+context-switches', perf)
cpu_us = (t1 - t0) * 1e6 / os.sysconf('SC_CLK_TCK')
print(json.dumps({"config": name, "round": int(rnd), "messages": msgs,
                  "msgs_per_s": round(j.get("messages_per_s", 0)),
                  "cpu_us_per_msg": round(cpu_us / max(msgs, 1), 3),
                  "enters": enters.group(1) if enters else None, "cs": cs.group(1) if cs else None,
                  "p50_us": j.get("latency_us", {}).get("p50"), "parks": float(parks), "loadavg": os.getloadavg()[0]}), flush=True)
PY
    PORT=$((PORT+2))
  done
done
