#!/bin/bash
# usage: mw.sh "<RINGHOLD_MIN_WAIT or empty>" engine
MW="$1"; ENG=${2:-uring}
PORT=7811
env ${MW:+RINGHOLD_COMPLETION_BATCH=$MW} ${BIN:-./target/release/ringhold} serve --engine $ENG --listen 127.0.0.1:$PORT --metrics-listen off --no-pin > /tmp/mw-srv.log 2>&1 &
SP=$!
sleep 0.5
perf stat -e syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_epoll_wait,context-switches -p $SP -o /tmp/mw-perf.txt -- sleep 6 &
PP=$!
T0=$(awk '{print $14+$15}' /proc/$SP/stat)
./bench/peers/target/release/bench-client --target 127.0.0.1:$PORT --connections 500 --message-size 128 --duration 5 --mode pingpong > /tmp/mw-out.json 2>/dev/null
T1=$(awk '{print $14+$15}' /proc/$SP/stat)
wait $PP
kill $SP; wait $SP 2>/dev/null
python3 - "$MW" "$ENG" $T0 $T1 <<'PY'
import json,sys,re
mw,eng,t0,t1=sys.argv[1],sys.argv[2],int(sys.argv[3]),int(sys.argv[4])
j=json.load(open('/tmp/mw-out.json'))
msgs=j.get('messages') or j.get('total_messages') or 0
perf=open('/tmp/mw-perf.txt').read()
enters=re.search(r'([\d,]+)\s+syscalls:sys_enter_io_uring_enter',perf)
cs=re.search(r'([\d,]+)\s+context-switches',perf)
cpu_us=(t1-t0)*10000
print(f"{eng} mw={mw or 'off':8} msgs={msgs} msg/s={j.get('messages_per_sec',0):.0f} cpu_us/msg={cpu_us/max(msgs,1):.2f} enters={enters.group(1) if enters else '?'} cs={cs.group(1) if cs else '?'} p50={j.get('p50_us', j.get('latency_us',{}))}")
PY
