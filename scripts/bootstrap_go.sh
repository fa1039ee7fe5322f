#!/usr/bin/env bash
# Go modules the tests need, from the Go module proxy: the real peers under tests/peers/NAME (Jaeger v2, an
# OpenTelemetry Collector, ...) built from their pinned go.mod/go.sum, and the dependencies of every
# module-mode fixture under tests/fixtures/goapps downloaded. Everything is cached outside the work tree
# (a fresh clone on the same machine reuses it), keyed by the content of the peer's folder and the Go
# version, so a second run takes well under a second.
#
# Usage: scripts/bootstrap_go.sh            build every peer, download every fixture module
#        scripts/bootstrap_go.sh --path NAME  build peer NAME if needed, print its binary's path
#
# A peer folder holds go.mod, go.sum, optionally main.go and friends, and two optional one-line files:
#   build      the package to build (default "."), e.g. github.com/jaegertracing/jaeger/cmd/jaeger
#   toolchain  a GOTOOLCHAIN value (e.g. go1.27.3) for modules that need a newer Go than the machine's
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CACHE=${GOTEL_GO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gotel}
export GOFLAGS=-mod=mod GOTELEMETRY=off
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
log() { echo "bootstrap: $*" >&2; }

peer_key() {  # content of the peer folder + the Go that builds it
  local dir=$1 tc=$2
  { (cd "$dir" && find . -type f | LC_ALL=C sort | xargs sha256sum); GOTOOLCHAIN=$tc "$GO" env GOVERSION; } \
    | sha256sum | cut -c1-16
}

build_peer() {  # prints the binary's path
  local name=$1 dir=$ROOT/tests/peers/$1 pkg=. tc=local
  [ -f "$dir/go.mod" ] || { log "no peer $name (tests/peers/$name/go.mod)"; return 2; }
  [ -f "$dir/build" ] && pkg=$(tr -d '[:space:]' < "$dir/build")
  [ -f "$dir/toolchain" ] && tc=$(tr -d '[:space:]' < "$dir/toolchain")
  local key out tmp start
  key=$(peer_key "$dir" "$tc")
  out=$CACHE/peers/$name-$key/$name
  if [ ! -x "$out" ]; then
    mkdir -p "$CACHE/peers"
    exec 9>"$CACHE/peers/.$name.lock"
    flock 9  # concurrent test processes build a peer once
    if [ ! -x "$out" ]; then
      start=$(date +%s)
      log "building peer $name ($pkg) from tests/peers/$name/go.mod"
      mkdir -p "$(dirname "$out")"
      tmp=$out.$$.tmp
      if ! (cd "$dir" && GOTOOLCHAIN=$tc "$GO" build -trimpath -buildvcs=false -o "$tmp" "$pkg") >&2; then
        rm -f "$tmp"; log "building peer $name failed"; return 1
      fi
      mv "$tmp" "$out"
      log "built peer $name in $(( $(date +%s) - start )) s: $out"
      for old in "$CACHE/peers/$name"-*; do [ "$old" = "$(dirname "$out")" ] || rm -rf "$old"; done
    fi
    exec 9>&-
  fi
  echo "$out"
}

if [ "${1:-}" = "--path" ]; then
  build_peer "${2:?usage: bootstrap_go.sh --path NAME}"
  exit
fi

for dir in "$ROOT"/tests/peers/*/; do
  [ -f "$dir/go.mod" ] || continue
  build_peer "$(basename "$dir")" >/dev/null
done
# Module-mode fixtures: their dependencies come into the module cache here, so the tests build offline.
while IFS= read -r mod; do
  dir=$(dirname "$mod") tc=local
  [ -f "$dir/toolchain" ] && tc=$(tr -d '[:space:]' < "$dir/toolchain")
  stamp=$CACHE/moddl/$(printf '%s' "${dir#"$ROOT"/}" | sha256sum | cut -c1-16)
  want=$( (cat "$mod"; [ ! -f "$dir/go.sum" ] || cat "$dir/go.sum") | sha256sum | cut -c1-16)
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && continue
  log "downloading modules for ${dir#"$ROOT"/}"
  (cd "$dir" && GOTOOLCHAIN=$tc "$GO" mod download) >&2 || { log "go mod download failed in $dir"; exit 1; }
  mkdir -p "$CACHE/moddl"; echo "$want" > "$stamp"
done < <(find "$ROOT/tests/fixtures/goapps" -name go.mod -not -path '*/vendor/*' | LC_ALL=C sort)
