#!/usr/bin/env bash
# Proves a built ringhold image where no container runtime can start (CI, a build host): mounts the
# image's root filesystem with buildah and runs its binary there with chroot, as the image's own
# non-root user (so with no capabilities), on loopback only:
#   - the image config: numeric non-root USER, the ENTRYPOINT, nothing in the filesystem but the
#     binary, and the binary statically linked;
#   - `ringhold --version` says the workspace version;
#   - `ringhold serve` on 127.0.0.1 with an ephemeral port echoes, serves /metrics and drains on
#     SIGTERM with exit 0, on each engine (io_uring only where the kernel allows it);
#   - `ringhold load --metrics-listen` from the image, given the server by a host name (resolved from
#     /etc/hosts as Kubernetes provides it), holds connections against it and exits 0.
# Every step is bounded in time; any failure ends the script with "check.sh: FAIL: …" and exit 1.
#
#   deploy/container/check.sh localhost/ringhold:0.1.0      (build.sh --check runs it)
# Needs root (buildah mount, chroot, a private mount namespace for /proc), buildah, python3, file.
set -euo pipefail
cd "$(dirname "$0")/../.."

image="${1:?usage: check.sh IMAGE}"
bah=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")
uid=65532
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
work=$(mktemp -d /tmp/ringhold-image-check.XXXXXX)
ctr=""
pids=()

fail() {
    echo "check.sh: FAIL: $*" >&2
    for f in "$work"/*.log; do
        [[ -e "$f" ]] && { echo "--- $f" >&2; tail -n 30 "$f" >&2; }
    done
    exit 1
}
cleanup() {
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    if [[ -n "$ctr" ]]; then
        "${bah[@]}" umount "$ctr" >/dev/null 2>&1 || true
        "${bah[@]}" rm "$ctr" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# --- the image's config and filesystem ------------------------------------------------------------
cfg=$("${bah[@]}" inspect --type image --format '{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}}' "$image") ||
    fail "no image $image (build it with deploy/container/build.sh)"
[[ "$cfg" == "$uid:$uid [/usr/local/bin/ringhold]" ]] ||
    fail "image config: want USER $uid:$uid and ENTRYPOINT [/usr/local/bin/ringhold], got: $cfg"

ctr=$("${bah[@]}" from --pull=never --name "ringhold-check-$$" "$image")
root=$("${bah[@]}" mount "$ctr")
files=$(cd "$root" && find . -mindepth 1 ! -type d | sort)
[[ "$files" == "./usr/local/bin/ringhold" ]] || fail "the image should hold only the binary, it holds: $files"
bin_desc=$(file -b "$root/usr/local/bin/ringhold")
grep -q 'static' <<<"$bin_desc" || fail "the image's binary is not static: $bin_desc"
echo "check.sh: $image: USER $uid:$uid, one file (/usr/local/bin/ringhold: $bin_desc)"

# A runtime gives the container /proc, /sys (read-only) and a /dev with the standard devices (the
# epoll engine, for one, keeps /dev/null open as its spare descriptor for EMFILE); so does this, in a
# private mount namespace, on mount points made in the working container (not in the image).
mkdir -p "$root/proc" "$root/sys" "$root/dev" "$root/etc"
# Kubernetes mounts /etc/hosts and /etc/resolv.conf into every container; the load below reaches the
# server by a name from this hosts file, through the static binary's own (glibc) resolver.
echo "127.0.0.1 ringhold-check.internal" >"$root/etc/hosts"

# Runs the image's binary in the chroot as the image's user: "${in_image[@]}" ARGS. Every step execs
# the next, so the pid of a background run ($!) is ringhold's.
setup_mounts='r=$0
mount -t proc proc "$r/proc" && mount --rbind -o ro /sys "$r/sys" && mount -o remount,bind,ro "$r/sys" &&
mount -t tmpfs -o mode=755,nosuid tmpfs "$r/dev" || exit 125
for d in null zero full random urandom; do
    touch "$r/dev/$d" && mount --bind "/dev/$d" "$r/dev/$d" || exit 125
done'
in_image=(unshare --mount --propagation private
    sh -c "$setup_mounts"'
exec chroot --userspec='"$uid:$uid"' "$r" /usr/local/bin/ringhold "$@"'
    "$root")

# Waits up to 20 s for "$2" in file $1; prints the rest of that line.
wait_log() {
    local file=$1 needle=$2 pid=$3 i
    for ((i = 0; i < 200; i++)); do
        local line
        if line=$(grep -m1 -F -- "$needle" "$file" 2>/dev/null); then
            line=${line#*"$needle"}
            echo "${line%% *}"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# Waits up to $2 s for process $1 to end; its exit status in $rc.
wait_exit() {
    local pid=$1 secs=$2 i
    for ((i = 0; i < secs * 10; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            rc=0
            wait "$pid" || rc=$?
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# --- --version ------------------------------------------------------------------------------------
out=$(timeout 20 "${in_image[@]}" --version 2>&1) || fail "ringhold --version in the image: $out"
[[ "$out" == "ringhold $version" ]] || fail "ringhold --version: want 'ringhold $version', got '$out'"
echo "check.sh: --version: $out"

# --- serve echoes, serves metrics, drains -----------------------------------------------------------
uring_ok=1
if ! python3 -c 'import ctypes,sys; l=ctypes.CDLL(None,use_errno=True); p=ctypes.create_string_buffer(120); fd=l.syscall(425,2,p); sys.exit(0 if fd>=0 else 1)'; then
    uring_ok=0
fi
engines=(epoll)
if ((uring_ok)); then engines=(uring epoll); else echo "check.sh: SKIP the io_uring engine and load: io_uring_setup fails on this kernel"; fi

for engine in "${engines[@]}"; do
    log="$work/serve-$engine.log"
    "${in_image[@]}" serve --engine "$engine" --shards 2 --no-pin \
        --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 >"$log" 2>&1 &
    pid=$!
    pids+=("$pid")
    addr=$(wait_log "$log" "listening on " "$pid") || fail "serve --engine $engine in the image did not start"
    maddr=$(wait_log "$log" "metrics on http://" "$pid") || fail "serve --engine $engine: no metrics address"
    maddr=${maddr%/metrics}
    python3 - "$addr" "$maddr" "$engine" <<'EOF' || fail "serve --engine $engine in the image: echo or metrics"
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
msg = bytes(range(256)) * 40
with socket.create_connection((host, int(port)), timeout=10) as s:
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
assert got == msg, f"echo: sent {len(msg)} bytes, got {len(got)} back (equal: {got == msg[:len(got)]})"
host, port = sys.argv[2].rsplit(":", 1)
with socket.create_connection((host, int(port)), timeout=10) as s:
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    body = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
text = body.decode()
assert text.startswith("HTTP/1.1 200 OK"), text[:200]
want = f'engine="{sys.argv[3]}"'
assert any(l.startswith("ringhold_build_info{") and want in l for l in text.splitlines()), text
EOF
    echo "check.sh: serve --engine $engine in the image: echoed 10240 bytes, /metrics answered"

    if [[ "$engine" == uring ]]; then
        llog="$work/load.log"
        "${in_image[@]}" load --target "ringhold-check.internal:${addr##*:}" --connections 200 --sources 2 --interval 200ms --duration 2s \
            --metrics-listen 127.0.0.1:0 >"$llog" 2>&1 &
        lpid=$!
        pids+=("$lpid")
        wait_log "$llog" "metrics on http://" "$lpid" >/dev/null || fail "load in the image: no metrics address"
        wait_exit "$lpid" 30 || fail "load in the image did not finish within 30 s"
        ((rc == 0)) || fail "load in the image exited $rc"
        grep -q "result         OK" "$llog" || fail "load in the image: no OK result"
        echo "check.sh: load in the image: 200 connections to ringhold-check.internal (/etc/hosts) held and echoed, metrics served"
    fi

    kill -TERM "$pid"
    wait_exit "$pid" 30 || fail "serve --engine $engine did not stop within 30 s of SIGTERM"
    ((rc == 0)) || fail "serve --engine $engine exited $rc after SIGTERM"
    echo "check.sh: serve --engine $engine in the image: SIGTERM, exit 0"
done
echo "check.sh: OK: $image"
