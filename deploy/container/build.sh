#!/usr/bin/env bash
# Builds ringhold's container image: a static binary compiled on this host, assembled FROM scratch by
# buildah (no base image is pulled, no Rust toolchain or extra Rust target inside the build).
#
#   deploy/container/build.sh                       build localhost/ringhold:<version>
#   deploy/container/build.sh --check               ... and prove the image (deploy/container/check.sh)
#   deploy/container/build.sh --push REPO           ... and push it as REPO:<version>
#                                                   (e.g. registry.example.com/ops/ringhold)
#   deploy/container/build.sh --save FILE           ... and write it as a docker-archive tarball for
#                                                   `ctr -n k8s.io images import FILE` on each node
#
# <version> is the workspace version (Cargo.toml), the tag the Kubernetes manifests use.
# Environment:
#   IMAGE           image name without tag (default localhost/ringhold)
#   STORAGE_DRIVER  containers-storage driver (default vfs: works anywhere, also inside a container or
#                   a VM without overlayfs; use overlay where it works, it is faster)
#   CARGO_TARGET_DIR  as for cargo (default target/)
# Needs: cargo, buildah (Debian: apt-get install buildah), file.
set -euo pipefail
cd "$(dirname "$0")/../.."

check=0
push=""
save=""
while (($#)); do
    case "$1" in
        --check) check=1 ;;
        --push) push="${2:?--push needs a repository, e.g. registry.example.com/ops/ringhold}"; shift ;;
        --save) save="${2:?--save needs a file name}"; shift ;;
        -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[[ -n "$version" ]] || { echo "build.sh: no version in Cargo.toml" >&2; exit 1; }
image="${IMAGE:-localhost/ringhold}:$version"
bah=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")
target_dir="${CARGO_TARGET_DIR:-target}"
triple=x86_64-unknown-linux-gnu

# 1. The static binary. An explicit --target keeps crt-static away from build scripts and proc-macros
#    (which must stay dynamic); debug info is dropped, symbol names stay for backtraces.
echo "build.sh: cargo build --release --target $triple (static)"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    cargo build --release --locked --target "$triple" -p ringhold
bin="$target_dir/$triple/release/ringhold"
desc=$(file -b "$bin")
echo "build.sh: $bin: $desc"
if ! grep -q 'static' <<<"$desc" || ldd "$bin" 2>&1 | grep -q '=>'; then
    echo "build.sh: $bin is not statically linked; ldd says:" >&2
    ldd "$bin" >&2 || true
    exit 1
fi

# 2. The image, from a context that holds only the binary.
ctx="$target_dir/container-context"
rm -rf "$ctx"
mkdir -p "$ctx"
cp "$bin" "$ctx/ringhold"
echo "build.sh: buildah build -t $image"
"${bah[@]}" build --quiet --format oci --pull=never --build-arg "VERSION=$version" \
    -f Containerfile -t "$image" "$ctx" >/dev/null
rm -rf "$ctx"
"${bah[@]}" images "$image"

if ((check)); then
    STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}" bash deploy/container/check.sh "$image"
fi
if [[ -n "$save" ]]; then
    rm -f "$save"
    "${bah[@]}" push --quiet "$image" "docker-archive:$save:$image"
    echo "build.sh: wrote $save (import on a node: ctr -n k8s.io images import $save)"
fi
if [[ -n "$push" ]]; then
    "${bah[@]}" tag "$image" "$push:$version"
    "${bah[@]}" push "$push:$version" "docker://$push:$version"
    echo "build.sh: pushed $push:$version; point the manifests at it:"
    echo "  sed -i 's|$image|$push:$version|' deploy/kubernetes/*.yaml"
fi
