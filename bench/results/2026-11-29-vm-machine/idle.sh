#!/bin/bash
BIN=$1; ENG=$2; N=${3:-10000}; PORT=7820
$BIN serve --engine $ENG --listen 127.0.0.1:$PORT --metrics-listen off --no-pin --fixed-files 12000 > /tmp/idle-srv.log 2>&1 &
SP=$!; sleep 0.7
R0=$(awk '/VmRSS/{print $2}' /proc/$SP/status)
./bench/peers/target/release/bench-client --target 127.0.0.1:$PORT --connections $N --mode hold --duration 8 --sources 4 > /tmp/idle-out.json 2>/tmp/idle-err.log &
CP=$!; sleep 6
R1=$(awk '/VmRSS/{print $2}' /proc/$SP/status)
wait $CP; kill $SP; wait $SP 2>/dev/null
echo "$ENG $(basename $(dirname $(dirname $(dirname $BIN)))) rss0=${R0}kB rss1=${R1}kB per_conn=$(( (R1-R0)*1024/N ))B total_per_conn=$(( R1*1024/N ))B"
