#!/usr/bin/env bash
# Installs everything kbisect needs on a fresh Debian/Ubuntu machine and is safe to re-run:
# Debian packages, the libvirt daemons (started by hand where no service manager runs),
# and a virtualenv in .venv with kbisect and its test tools.
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

PKGS=(qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev pkg-config
      mmdebstrap busybox-static cpio kmod e2fsprogs zstd xz-utils dpkg-dev gcc make bc flex bison
      libelf-dev libssl-dev openssh-client git python3-venv python3-dev patch
      nftables tcpdump ethtool ipvsadm iputils-ping bpftrace iproute2 procps
      gpgv gnupg chromium ccache dwarves)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# /dev/kvm can exist without working KVM (as on these machines). libvirt probes QEMU's
# capabilities again on every start while the node is root-only, which makes creating a domain
# take minutes; the packaged permissions (group kvm, 0660) stop that. kbisect's own KVM
# detection still falls back to TCG when KVM does not work.
if [ -c /dev/kvm ] && getent group kvm >/dev/null; then
  $SUDO chgrp kvm /dev/kvm && $SUDO chmod 0660 /dev/kvm || true
fi

# kbisect never uses libvirt networks: keep the packaged NAT network from autostarting.
$SUDO rm -f /etc/libvirt/qemu/networks/autostart/default.xml

if [ -d /run/systemd/system ]; then
  $SUDO systemctl start virtlogd libvirtd >&2 || true
fi
pgrep -x virtlogd >/dev/null || $SUDO virtlogd -d
pgrep -x libvirtd >/dev/null || $SUDO libvirtd -d
for _ in $(seq 1 50); do
  $SUDO virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.2
done

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.kbisect-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >&2
  .venv/bin/pip install -q -e '.[test]' >&2
  touch "$stamp"
fi
echo "setup: ready (.venv/bin/kbisect)" >&2
