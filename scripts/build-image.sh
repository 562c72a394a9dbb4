#!/usr/bin/env bash
# Builds the operator image from the release binary without Docker and without a registry:
# the root filesystem of scripts/image-rootfs.sh (Debian 12's libc6 + libgcc-s1, the CA bundle,
# nonroot 65532), the stripped `keysmith` binary at /keysmith, `buildah from scratch`, OCI labels,
# every timestamp set to SOURCE_DATE_EPOCH, so that a rebuild of the same commit has the same
# digest. Writes
#   target/image/keysmith-oci.tar      OCI image layout archive (registries, skopeo, ctr import)
#   target/image/keysmith-docker.tar   docker-archive (docker load, ctr import, kind load)
# and prints the image name, digest and size. The image's entrypoint is /keysmith with `run` as
# the default command, so it also runs the emulators (`keysmith emulate <provider> ...`).
#
# Usage: scripts/build-image.sh            (root; tools: scripts/install-node-tools.sh)
#   IMAGE              name:tag (default localhost/keysmith:<version from Cargo.toml>)
#   KEYSMITH_BIN       binary to package (default target/release/keysmith, built when missing
#                      or older than the sources; KEYSMITH_BIN=... packages that file as is)
#   OUT                output directory (default target/image)
#   SOURCE_DATE_EPOCH  timestamp of every file and of the image (default: the last commit's)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
log() { echo "build-image: $*" >&2; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE=${IMAGE:-localhost/keysmith:$version}
OUT=${OUT:-$root/target/image}
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
# Not exported before cargo runs: a build script that watches SOURCE_DATE_EPOCH would make cargo
# rebuild the release binary (5 min) whenever it appears, disappears or changes.
if [[ -z "${SOURCE_DATE_EPOCH:-}" ]]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)
fi
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)

for c in buildah mmdebstrap dpkg-deb objcopy; do
  command -v $c >/dev/null || { log "$c is missing: run scripts/install-node-tools.sh"; exit 1; }
done

if [[ -z "${KEYSMITH_BIN:-}" ]]; then
  KEYSMITH_BIN=$root/target/release/keysmith
  # cargo decides whether anything changed (a no-op build takes a second)
  log "cargo build --release --locked --bin keysmith"
  cargo build --release --locked --bin keysmith >&2
fi
[[ -x "$KEYSMITH_BIN" ]] || { log "no binary at $KEYSMITH_BIN"; exit 1; }

export SOURCE_DATE_EPOCH
mkdir -p "$OUT"
work=$OUT/work
rm -rf "$work"; mkdir -p "$work"
start=$SECONDS
scripts/image-rootfs.sh "$work/rootfs"
# The same as the Dockerfile's CARGO_PROFILE_RELEASE_STRIP=symbols, without rebuilding.
objcopy --strip-all "$KEYSMITH_BIN" "$work/keysmith"
chmod 0755 "$work/keysmith"
touch -d "@$SOURCE_DATE_EPOCH" "$work/keysmith"
"$work/keysmith" --version >/dev/null 2>&1 || { log "$KEYSMITH_BIN does not run"; exit 1; }

c=$(buildah from --quiet scratch)
trap 'buildah rm "$c" >/dev/null 2>&1 || true' EXIT
buildah copy --quiet "$c" "$work/rootfs/" / >/dev/null
buildah copy --quiet "$c" "$work/keysmith" /keysmith >/dev/null
buildah config \
  --os linux --arch amd64 \
  --user 65532:65532 --workingdir / \
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --port 8080/tcp \
  --entrypoint '["/keysmith"]' --cmd run \
  --label org.opencontainers.image.title=keysmith \
  --label "org.opencontainers.image.description=Kubernetes operator that creates API keys at AI and compute providers and delivers them into Secrets" \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$revision" \
  --label "org.opencontainers.image.created=$created" \
  --label "org.opencontainers.image.base.name=scratch (Debian 12 libc6, libgcc-s1, ca-certificates)" \
  "$c"
# A rebuild replaces the image of the same name in buildah's store instead of leaving it dangling.
buildah rmi --force "$IMAGE" >/dev/null 2>&1 || true
buildah commit --quiet --format oci --timestamp "$SOURCE_DATE_EPOCH" --rm "$c" "$IMAGE" >/dev/null
trap - EXIT

rm -f "$OUT/keysmith-oci.tar" "$OUT/keysmith-docker.tar"
# oci-archive: would stamp the tar headers with the current time; an OCI layout directory
# tarred with fixed names, owners and times is byte-for-byte the same on every rebuild.
buildah push --quiet "$IMAGE" "oci:$work/oci:$IMAGE"
tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$work/oci" -cf "$OUT/keysmith-oci.tar" oci-layout index.json blobs
buildah push --quiet "$IMAGE" "docker-archive:$OUT/keysmith-docker.tar:$IMAGE"
digest=$(tar -xOf "$OUT/keysmith-oci.tar" index.json | jq -r '.manifests[0].digest')
image_id=$(buildah inspect --type image --format '{{.FromImageID}}' "$IMAGE")
rm -rf "$work"
printf '%s\n' "$IMAGE" >"$OUT/image-name"
printf '%s\n' "$digest" >"$OUT/image-digest"
size_oci=$(stat -c %s "$OUT/keysmith-oci.tar")
size_docker=$(stat -c %s "$OUT/keysmith-docker.tar")
echo "image:   $IMAGE"
echo "digest:  $digest (config sha256:$image_id)"
echo "size:    $((size_oci / 1024)) KiB compressed ($OUT/keysmith-oci.tar), $((size_docker / 1024)) KiB uncompressed ($OUT/keysmith-docker.tar)"
echo "built in $((SECONDS - start)) s (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH, revision $revision)"
