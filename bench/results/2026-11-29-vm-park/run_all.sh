#!/bin/bash
# The exact commands of this archive, in order (run from the worktree root, release build of the
# commit in commit.txt; bench-client from bench/peers).
set -x
D=bench/results/2026-11-29-vm-park
B=target/release/ringhold
C=${CLIENT:-bench/peers/target/release/bench-client}
python3 $D/idle_slab.py --bin $B --client $C -n 15000 --rounds 3 --settle 6 \
  --config 'uring-parked=--engine uring --park-after 1s' \
  --config 'uring-unparked=--engine uring --park-after 0' \
  --config 'epoll=--engine epoll' --out $D/idle.json > $D/idle.txt 2>&1
python3 $D/heartbeat.py --bin $B --client $C -n 15000 --heartbeat 5 --rounds 3 --settle 8 --window 30 \
  --config 'uring-parked=--engine uring --park-after 1s' \
  --config 'uring-parked-wake-multishot=RINGHOLD_PARK_WAKE=multishot -- --engine uring --park-after 1s' \
  --config 'uring-unparked=--engine uring --park-after 0' \
  --config 'epoll=--engine epoll' --out $D/heartbeat.json > $D/heartbeat.txt 2>&1
CLIENT=$C $D/pingpong.sh 5 'uring-parked=--engine uring --park-after 1s' \
  'uring-unparked=--engine uring --park-after 0' > $D/pingpong.txt 2>&1
# Idle again, with vm.drop_caches=2 before each slab reading (a process on this machine walks
# /proc/<pid>/fd, which leaves a proc inode and a dentry per server fd in the caches: see results.md).
python3 $D/idle_slab.py --bin $B --client $C -n 15000 --rounds 3 --settle 6 --drop-caches \
  --config 'uring-parked=--engine uring --park-after 1s' \
  --config 'uring-unparked=--engine uring --park-after 0' \
  --config 'epoll=--engine epoll' --out $D/idle-dropcaches.json > $D/idle-dropcaches.txt 2>&1
