"""`image build --force` never pulls the base image from under a running VM (issue 11, item 8).

A live run is staged as the runtime leaves one (runs/<id>/state.json naming this test process,
vm-1/overlay.qcow2 made by qemu-img with the image as its backing file); no VM is booted and no
image is built: the refusal comes before any build, and the swap-aside is tested on its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from orchestrator.adapters.guest import image
from orchestrator.adapters.guest.vm import _proc_start


def _fake_image(home: Path) -> Path:
    d = home / "images" / image.recipe_hash()
    d.mkdir(parents=True)
    base = d / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    (d / "image.json").write_text(json.dumps({"host_key": "ssh-ed25519 AAAA", "suite": "bookworm"}))
    return base


def _live_overlay(home: Path, base: Path, pid: int, run_id: str = "abc123") -> Path:
    run = home / "runs" / run_id
    (run / "vm-1").mkdir(parents=True)
    (run / "state.json").write_text(json.dumps({"run_id": run_id, "pid": pid, "start": _proc_start(pid)}))
    overlay = run / "vm-1" / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay)], check=True)
    return overlay


def test_backing_file_is_read_from_the_qcow2_header(kbisect_home):
    base = _fake_image(kbisect_home)
    overlay = _live_overlay(kbisect_home, base, os.getpid())
    assert image.backing_file(overlay) == str(base)
    assert image.backing_file(base) is None  # a base has no backing file
    assert image.overlays_using(base) == [overlay]


def test_force_is_refused_while_a_live_overlay_uses_the_image(kbisect_home):
    base = _fake_image(kbisect_home)
    before = base.read_bytes()
    _live_overlay(kbisect_home, base, os.getpid())  # this test process is the live owner
    r = subprocess.run([sys.executable, "-m", "orchestrator", "image", "build", "--force"],
                       capture_output=True, text=True, env={**os.environ, "KBISECT_HOME": str(kbisect_home)})
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("kbisect: error:")]
    assert len(errors) == 1 and "running VM overlay" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert base.read_bytes() == before and (base.parent / "image.json").exists()
    assert not list((kbisect_home / "images").glob("*.build-*"))


def test_overlays_of_dead_runs_do_not_hold_the_image(kbisect_home):
    base = _fake_image(kbisect_home)
    dead = subprocess.Popen(["true"])
    dead.wait()
    _live_overlay(kbisect_home, base, dead.pid, run_id="dead01")
    assert image.overlays_using(base) == []


def test_a_replaced_image_in_use_is_kept_aside_until_unused(kbisect_home):
    """A VM that started while the new image was built: the old image moves aside (its QEMU
    holds it open) and gc removes it only once nobody holds it."""
    base = _fake_image(kbisect_home)
    _live_overlay(kbisect_home, base, os.getpid())
    image._retire(base.parent)  # what build(replace=True) does just before the new image moves in
    kept = base.parent.with_name(f"{base.parent.name}.old-{os.getpid()}")
    assert not base.parent.exists() and (kept / "root.qcow2").exists()
    with open(kept / "root.qcow2", "rb") as held:  # a child holding it open stands for the running QEMU
        qemu = subprocess.Popen(["sleep", "600"], stdin=held)
    try:
        assert image.gc_builds() == []
    finally:
        qemu.kill()
        qemu.wait()
    assert image.gc_builds() == [kept] and not kept.exists()
