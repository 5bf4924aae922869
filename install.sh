#!/usr/bin/env bash
# Install engine on this machine (Debian/Ubuntu, as root), start the daemon and give it
# a first image built from busybox-static, so `engine run --rm busybox ...` works offline.
#
#   ./install.sh && engine run --rm busybox echo hello     (as root)
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)
if [ "$(id -u)" != 0 ]; then echo "install.sh: run as root" >&2; exit 1; fi

export DEBIAN_FRONTEND=noninteractive
if ! command -v busybox >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  apt-get update -qq
  apt-get install -y -qq python3-venv busybox-static iptables iproute2 >/dev/null
fi
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check . >/dev/null
env -u PYTHONDONTWRITEBYTECODE .venv/bin/python -m compileall -q core plugins sdk >/dev/null || true
ln -sf "$here/.venv/bin/engine" /usr/local/bin/engine
ln -sf "$here/.venv/bin/engined" /usr/local/bin/engined

sock=/run/engine/engine.sock
if ! .venv/bin/python -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect('$sock')" 2>/dev/null; then
  if [ -d /run/systemd/system ]; then
    install -m 644 contrib/engine.service /etc/systemd/system/engine.service
    sed -i "s#@ENGINED@#$here/.venv/bin/engined#" /etc/systemd/system/engine.service
    systemctl daemon-reload
    systemctl enable --now engine.service
  else
    mkdir -p /var/log
    nohup env -u PYTHONDONTWRITEBYTECODE "$here/.venv/bin/engined" >>/var/log/engined.log 2>&1 &
  fi
  for _ in $(seq 100); do
    [ -S "$sock" ] && break
    sleep 0.05
  done
fi
if ! .venv/bin/engine image inspect busybox >/dev/null 2>&1; then
  .venv/bin/python scripts/busybox_rootfs.py | .venv/bin/engine import -c 'CMD ["sh"]' - busybox:latest >/dev/null
fi
echo "engine is installed: try 'engine run --rm busybox echo hello'"
