#!/usr/bin/env bash
# The operator image's root filesystem, without the binary: Debian 12's libc6 and libgcc-s1 (the
# only libraries `keysmith` links: TLS is rustls), the Mozilla CA bundle from ca-certificates,
# a nonroot user 65532, /tmp, and /var/lib/dpkg/status.d/<package> so that image scanners see
# which Debian packages (and versions) it holds. Used by scripts/build-image.sh and by the
# Dockerfile, so both images hold the same files.
#
# Usage: scripts/image-rootfs.sh OUTDIR [SUITE]      (root; needs mmdebstrap and dpkg-deb)
#   SUITE        Debian suite (default bookworm, the glibc generation the binary is built for)
#   APT_SOURCES  sources file(s) for mmdebstrap (default: this machine's apt sources)
set -euo pipefail
out=${1:?usage: image-rootfs.sh OUTDIR [SUITE]}
suite=${2:-bookworm}
pkgs=(libc6 libgcc-s1 gcc-12-base ca-certificates)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
if [[ -z "${APT_SOURCES:-}" ]]; then
  APT_SOURCES=""
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -s "$f" ]] && APT_SOURCES="$APT_SOURCES $f"
  done
fi
# --variant=extract: nothing is configured or run, the packages are only resolved (with their
# signatures checked), downloaded and unpacked. The .debs are kept so that only the wanted ones
# go into the image (apt also pulls debconf, openssl, libssl3 as dependencies of ca-certificates).
# shellcheck disable=SC2086
mmdebstrap --quiet --mode=root --variant=extract --skip=cleanup/apt/cache \
  --include="$(IFS=,; echo "${pkgs[*]}")" "$suite" "$stage/root" $APT_SOURCES

rm -rf "$out"
mkdir -p "$out"/{etc/ssl/certs,tmp,home/nonroot,var/lib/dpkg/status.d}
chmod 1777 "$out/tmp"
for p in "${pkgs[@]}"; do
  deb=$(ls "$stage"/root/var/cache/apt/archives/"${p}"_*.deb)
  dpkg-deb -x "$deb" "$out"
  dpkg-deb -f "$deb" Package Version Architecture Source Maintainer Homepage >"$out/var/lib/dpkg/status.d/$p"
done
# What a Rust binary never uses: iconv modules (8 MB), man pages, translations, lintian data,
# changelogs (each package's copyright file stays), the ca-certificates tooling and debconf bits.
rm -rf "$out"/usr/lib/*-linux-gnu/gconv "$out"/usr/share/{man,info,locale,lintian,bash-completion,pixmaps} \
  "$out"/usr/sbin "$out"/etc/ca-certificates "$out"/usr/share/doc/*/{changelog*,NEWS*,README*,TODO*,examples}
# What update-ca-certificates would write: every Mozilla root, in a stable order.
LC_ALL=C find "$out/usr/share/ca-certificates/mozilla" -name '*.crt' | LC_ALL=C sort |
  xargs cat >"$out/etc/ssl/certs/ca-certificates.crt"
rm -rf "$out/usr/share/ca-certificates"
# nonroot 65532 as distroless names it (numeric USER in the image config, so runAsNonRoot works).
printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$out/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$out/etc/group"
chown 65532:65532 "$out/home/nonroot"
find "$out" -exec touch -h -d "@${SOURCE_DATE_EPOCH:-0}" {} +
echo "image-rootfs: $out ($(du -sh "$out" | cut -f1)): $(cd "$out/var/lib/dpkg/status.d" && for p in *; do printf '%s=%s ' "$p" "$(sed -n 's/^Version: //p' "$p")"; done)" >&2
