#!/usr/bin/env python3
"""Probe overhead benchmark: kbisect's probe wall time against a bare QEMU floor.

    .venv/bin/python bench/probe.py [-n 5] [--kernel debian:6.1.0-54-cloud-amd64] [--accel auto]

Both sides boot the same kernel with the same initramfs, root image (through a fresh overlay)
and modules disk, and run the same reproducer script:

- kbisect: `orchestrator.adapters.guest.probe.run_probe_kernel` (libvirt domain, SSH readiness, SFTP upload,
  run over SSH, artefact + dmesg collection, destroy), caches warm;
- floor: `qemu-system-x86_64 -kernel … -initrd …` started directly; the guest init runs the
  script it receives through fw_cfg right after bringing the network up (no sshd, no libvirt,
  no upload) and powers off. Wall time is QEMU start to QEMU exit.

Runs alternate (floor, probe, floor, probe, …) so load from other VMs on the host hits both
sides alike. Prints each phase's median, the wall-time medians and their ratio (target ≤ 1.3).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.adapters.guest import accel as accelmod
from orchestrator.adapters.guest import bootfiles, image, probe, session, ssh
from orchestrator.adapters.guest import vm as vmmod
from orchestrator.app.kernels import fetch_kernel
from orchestrator.core.bug import Bug

SCRIPT = """\
set -e
echo "kernel $(uname -r)"
modprobe veth
ip link add v0 type veth peer name v1
ip link add g0 type gretap local 10.0.2.15 remote 10.0.2.2
ip -br link | wc -l
python3 -c 'print("python ok")'
echo "ok on $(uname -r)"
"""


def floor_once(boot: bootfiles.BootFiles, img: image.RootImage, script: Path, acc: str, workdir: Path,
               memory_mb: int, cpus: int) -> float:
    overlay = workdir / "floor-overlay.qcow2"
    log = workdir / "floor-console.log"
    overlay.unlink(missing_ok=True)
    log.unlink(missing_ok=True)
    cmdline = session.build_cmdline(ssh.cmdline_key_arg()) + " kbisect.floor"
    t0 = time.monotonic()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(img.path), str(overlay)],
                   check=True)
    cpu = ["-cpu", "host"] if acc == "kvm" else ["-cpu", "qemu64"]
    cmd = [
        "qemu-system-x86_64", "-machine", f"q35,accel={acc}", *cpu, "-m", str(memory_mb), "-smp", str(cpus),
        "-display", "none", "-nodefaults", "-no-reboot", "-serial", f"file:{log}",
        "-kernel", str(boot.vmlinuz), "-initrd", str(boot.initrd), "-append", cmdline,
        "-drive", f"file={overlay},if=virtio,format=qcow2,cache=unsafe",
        "-drive", f"file={boot.modules_disk},if=virtio,format=raw,readonly=on",
        "-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0",
        "-device", "pvpanic", "-fw_cfg", f"name=opt/kbisect/run.sh,file={script}",
    ]
    subprocess.run(cmd, check=True, timeout=600, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    overlay.unlink(missing_ok=True)
    text = log.read_text(errors="replace")
    if "floor-exit 0" not in text:
        raise SystemExit(f"floor run failed; console tail:\n{text[-2000:]}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("-n", type=int, default=5, help="probes per side (default 5)")
    ap.add_argument("--kernel", default="debian:6.1.0-54-cloud-amd64")
    ap.add_argument("--accel", default="auto", choices=["auto", "kvm", "tcg"])
    ap.add_argument("--memory", type=int, default=1024)
    ap.add_argument("--cpus", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = ap.parse_args()

    kernel = fetch_kernel(args.kernel)
    img = image.ensure()
    boot = bootfiles.ensure(kernel)
    acc = accelmod.resolve(args.accel, boot.vmlinuz, boot.initrd)
    probe._reap_stale(None)

    floors: list[float] = []
    walls: list[float] = []
    walls_sync: list[float] = []  # including libvirt's domain stop, which a probe runs in the background
    phases: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="kbisect-bench-") as tmp:
        tmpd = Path(tmp)
        repro = tmpd / "repro"
        repro.mkdir()
        (repro / "run.sh").write_text(SCRIPT)
        bug = Bug(id="bench", dir=repro, timeout=120)
        for i in range(args.n):
            floors.append(floor_once(boot, img, repro / "run.sh", acc, tmpd, args.memory, args.cpus))
            t0 = time.monotonic()
            rec = probe.run_probe_kernel(kernel, bug, accel=acc, memory_mb=args.memory, cpus=args.cpus,
                                         progress=False, results_dir=tmpd / "results")
            walls.append(time.monotonic() - t0)
            vmmod.wait_pending()
            walls_sync.append(time.monotonic() - t0)
            if rec.verdict.value != "good":
                raise SystemExit(f"probe {i} was {rec.verdict.value}: {rec.reason}")
            for k, v in rec.phases.items():
                phases.setdefault(k, []).append(v)
            print(f"run {i + 1}/{args.n}: floor {floors[-1]:.2f}s  kbisect {walls[-1]:.2f}s  "
                  + " ".join(f"{k}={v:.2f}" for k, v in rec.phases.items()), file=sys.stderr)

    med = {k: statistics.median(v) for k, v in phases.items()}
    floor_m = statistics.median(floors)
    wall_m = statistics.median(walls)
    sync_m = statistics.median(walls_sync)
    print(f"kernel {args.kernel} ({acc}), {args.n} probes each, medians:")
    for k, v in med.items():
        print(f"  {k:<9} {v:6.2f} s")
    print(f"  {'probe':<9} {wall_m:6.2f} s  (kbisect wall)")
    print(f"  {'floor':<9} {floor_m:6.2f} s  (bare qemu -kernel/-initrd, same commands)")
    print(f"  ratio     {wall_m / floor_m:6.2f} x  (target <= 1.30)")
    print(f"  probe+stop {sync_m:5.2f} s  (until libvirt finished stopping the domain in the background)")
    print(f"  ratio     {sync_m / floor_m:6.2f} x  (counting that stop too)")
    if args.json:
        print(json.dumps({"kernel": args.kernel, "accel": acc, "n": args.n, "phases_median": med,
                          "probe_median": wall_m, "floor_median": floor_m, "ratio": wall_m / floor_m,
                          "probe_with_stop_median": sync_m, "ratio_with_stop": sync_m / floor_m,
                          "floors": floors, "walls": walls}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
