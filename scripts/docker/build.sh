#!/usr/bin/env bash
# Builds atpd and atpctl (release, --locked) and lays out what the image
# holds under DESTDIR:
#   DESTDIR/usr/local/bin/atpd, DESTDIR/usr/local/bin/atpctl
#   DESTDIR/etc/atp/atpd.toml    the image's default config (scripts/docker/atpd.toml)
#   DESTDIR/var/lib/atp/         its data directory (owned by 65532 in the image)
# The Dockerfile's builder stage runs exactly this; scripts/docker-native-check
# runs it natively. protoc is the vendored one, through tools/protoc
# (.cargo/config.toml sets PROTOC). CARGO_TARGET_DIR is honoured.
set -euo pipefail
if [[ $# -ne 1 ]]; then
  echo "usage: scripts/docker/build.sh DESTDIR" >&2
  exit 2
fi
destdir=$1
cd "$(dirname "$0")/../.."

cargo build --release --locked -p atpd -p atpctl
target_dir=${CARGO_TARGET_DIR:-target}
install -D -m 0755 "$target_dir/release/atpd" "$destdir/usr/local/bin/atpd"
install -D -m 0755 "$target_dir/release/atpctl" "$destdir/usr/local/bin/atpctl"
install -D -m 0644 scripts/docker/atpd.toml "$destdir/etc/atp/atpd.toml"
install -d -m 0755 "$destdir/var/lib/atp"
