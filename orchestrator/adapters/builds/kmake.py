"""One kernel build with kbuild: configure, make bzImage and modules out of tree, install.

The build directory (`O=`) is reused per source tree and config, and gcc runs under ccache
(cache in $KBISECT_HOME/ccache), so the next commit of a bisection recompiles only what changed
and a rebuilt tree costs seconds. Timestamps, user and host are fixed (KBUILD_BUILD_*), so the
same source gives the same objects and ccache hits. The whole make output goes to the build
log, kept beside the kernel; the progress line counts compiled objects.

Configs (core.kconfig): `guest` is the architecture's defconfig, the tree's kvm_guest.config
when it has one, and a fragment (the guest's needs, the parents, every requirement of the
reproducers built for); `base` a prebuilt kernel's own config; a file the user's. `olddefconfig`
resolves the rest, and every requirement is then checked in the resulting .config: one unmet is
one error line, before anything is compiled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.adapters import cache, config
from orchestrator.adapters.builds.trees import SourceTree
from orchestrator.adapters.fsutil import atomic_write, run_to_log, run_tool
from orchestrator.adapters.progress import StepLog
from orchestrator.core.errors import BuildFailed, ConfigUnmet, KbisectError
from orchestrator.core.kconfig import Requirement, fragment_text, guest_fragment, overridden, parse_kconfig, unmet

CONFIG_MODES = ("guest", "base")  # or a file's path
_COMPILED_RE = re.compile(rb"^\s+(CC|AS|LD)\s", re.MULTILINE)


@dataclass
class BuildPlan:
    """What to build: the tree, the config (mode and, for base/file, the config's text), the
    requirements the result must meet, patches applied for this build only, make's -j, and the
    overrides (`--kconfig`): options set after everything else, replacing a requirement of the
    same option."""

    tree: SourceTree
    mode: str  # "guest", "base" or "file"
    base_config: str = ""  # the config text for base/file
    requirements: list[Requirement] = field(default_factory=list)
    patches: list[Path] = field(default_factory=list)
    jobs: int = 0  # 0: one per core
    overrides: list[Requirement] = field(default_factory=list)

    def config_key(self) -> str:
        """What the reusable build directory is keyed by, besides the tree."""
        if self.mode == "guest":
            return "guest:" + hashlib.sha256(fragment_text(self.fragment()).encode()).hexdigest()[:16]
        return f"{self.mode}:" + hashlib.sha256(self.config_text().encode()).hexdigest()[:16]

    def fragment(self) -> dict[str, str]:
        return guest_fragment(self.requirements, self.overrides)

    def config_text(self) -> str:
        """The base/file config as written before olddefconfig: the overrides appended (the last
        assignment of an option is the one kconfig keeps)."""
        if not self.overrides:
            return self.base_config
        return self.base_config.rstrip("\n") + "\n" + fragment_text({r.name: r.fragment_value() for r in self.overrides})

    def checked(self) -> list[Requirement]:
        """What the resolved .config must meet."""
        return overridden(self.requirements, self.overrides)


def obj_dir(plan: BuildPlan) -> Path:
    key = hashlib.sha256(f"{plan.tree.identity}\0{plan.config_key()}".encode()).hexdigest()[:16]
    return config.subdir("builds") / "obj" / key


def _env() -> dict[str, str]:
    env = dict(os.environ, CCACHE_DIR=str(config.subdir("ccache")), KBUILD_BUILD_TIMESTAMP="2000-01-01",
               KBUILD_BUILD_USER="kbisect", KBUILD_BUILD_HOST="kbisect", LC_ALL="C")
    env.setdefault("CCACHE_MAXSIZE", "5G")
    # Each config has its own build directory (obj_dir), and with -g ccache puts the working
    # directory into every object's hash (ccache manual, "hash_dir"): the same source under
    # another config (the catalog's config with --kconfig CONFIG_DEBUG_INFO_BTF=n) would then
    # never hit. Kbuild names nothing of O= on the compiler's command line (-I./include...), so
    # without it an object whose preprocessed text is unchanged is served from the cache. Cost:
    # such an object's DW_AT_comp_dir names the other build directory; nothing reads it (pahole
    # builds BTF from the types, and a kernel's sources are named by absolute path).
    env.setdefault("CCACHE_NOHASHDIR", "1")
    return env


def _make_args(plan: BuildPlan, obj: Path) -> list[str]:
    cc = "ccache gcc" if shutil.which("ccache") else "gcc"
    jobs = plan.jobs or os.cpu_count() or 1
    return ["make", "-C", str(plan.tree.path), f"O={obj}", f"-j{jobs}", f"CC={cc}", f"HOSTCC={cc}"]


def configure(plan: BuildPlan, obj: Path, log) -> dict[str, str]:
    """Write obj/.config for the plan and check the requirements; the resolved config."""
    make = _make_args(plan, obj)
    if plan.mode == "guest":
        _make(make + ["defconfig"], log, "make defconfig")
        if (plan.tree.path / "kernel" / "configs" / "kvm_guest.config").is_file():
            _make(make + ["kvm_guest.config"], log, "make kvm_guest.config")
        with open(obj / ".config", "a") as cfg:
            cfg.write("\n# kbisect guest fragment (core.kconfig)\n" + fragment_text(plan.fragment()))
    else:
        (obj / ".config").write_text(plan.config_text())
        _drop_signing_keys(obj / ".config")
    _make(make + ["olddefconfig"], log, "make olddefconfig")
    resolved = parse_kconfig((obj / ".config").read_text())
    wanted = plan.checked()
    if plan.mode == "guest":
        wanted += [Requirement(n, v) for n, v in plan.fragment().items() if n in _MUST_HOLD]
    missing = unmet(wanted, resolved)
    if missing:
        raise ConfigUnmet(f"config of {plan.tree.name}: {len(missing)} requirement(s) not met after olddefconfig "
                           f"(a dependency is off or the option does not exist in {plan.tree.version}): "
                           + ", ".join(missing[:6]))
    return resolved


# The guest options a booting kernel cannot do without (the rest of the fragment is best effort:
# an old tree may lack PVPANIC_MMIO, say)
_MUST_HOLD = ("CONFIG_VIRTIO_PCI", "CONFIG_VIRTIO_BLK", "CONFIG_VIRTIO_NET", "CONFIG_EXT4_FS", "CONFIG_DEVTMPFS",
              "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_NET_NS", "CONFIG_MODULES", "CONFIG_UNIX")


def _drop_signing_keys(path: Path) -> None:
    """A distro config names its own signing and trusted keys (Debian's debian/certs/...), which
    the source tree does not have: build without them, as Debian's own docs say for a custom
    build (CONFIG_SYSTEM_TRUSTED_KEYS="", CONFIG_MODULE_SIG_KEY left to the default)."""
    text = path.read_text()
    for name in ("CONFIG_SYSTEM_TRUSTED_KEYS", "CONFIG_SYSTEM_REVOCATION_KEYS", "CONFIG_MODULE_SIG_KEY"):
        text = re.sub(rf"^{name}=.*$", f'{name}=""' if name != "CONFIG_MODULE_SIG_KEY" else "", text, flags=re.MULTILINE)
    text = re.sub(r"^CONFIG_MODULE_SIG_ALL=y$", "# CONFIG_MODULE_SIG_ALL is not set", text, flags=re.MULTILINE)
    path.write_text(text)


def _make(cmd: list[str], log, what: str, tick=None) -> None:
    log.write(f"\n$ {' '.join(cmd)}\n".encode())
    log.flush()
    rc = run_to_log(cmd, log, tick, env=_env())
    if rc != 0:
        raise BuildFailed(f"{what} failed (exit {rc}); see {log.name}")


def build(plan: BuildPlan, obj: Path, log, progress: StepLog) -> None:
    """bzImage and modules, counting objects as they compile."""
    log_path = Path(log.name)
    started = log_path.stat().st_size
    t0 = time.monotonic()
    with progress.step(f"building {plan.tree.version} ({plan.mode} config) in {obj}") as step:
        def tick() -> None:
            try:
                with open(log_path, "rb") as f:
                    f.seek(started)
                    done = len(_COMPILED_RE.findall(f.read()))
            except OSError:
                return
            step.update(f"{done} objects, {time.monotonic() - t0:.0f} s")

        _make(_make_args(plan, obj) + ["bzImage", "modules"], log, "make bzImage modules", tick)


def kernel_release(plan: BuildPlan, obj: Path) -> str:
    out = run_tool(["make", "-s", "-C", str(plan.tree.path), f"O={obj}", "kernelrelease"], "make kernelrelease",
                   env=_env()).stdout.strip().splitlines()
    if not out or not re.fullmatch(r"[A-Za-z0-9._+~-]+", out[-1]):
        raise KbisectError(f"make kernelrelease in {obj} gave {out[-1:] or 'nothing'}")
    return out[-1]


def install(plan: BuildPlan, obj: Path, stage: Path, log) -> str:
    """vmlinuz, lib/modules/<release>, config and System.map into `stage`; the release."""
    release = kernel_release(plan, obj)
    stage.mkdir(parents=True)
    _make(_make_args(plan, obj) + [f"INSTALL_MOD_PATH={stage}", "INSTALL_MOD_STRIP=1", "DEPMOD=true",
                                   "modules_install"], log, "make modules_install")
    moddir = stage / "lib" / "modules" / release
    for link in ("build", "source"):  # they point into the tree: the unpacker refuses links out
        (moddir / link).unlink(missing_ok=True)
    shutil.copyfile(obj / "arch" / "x86" / "boot" / "bzImage", stage / "vmlinuz")
    shutil.copyfile(obj / ".config", stage / "config")
    shutil.copyfile(obj / "System.map", stage / "System.map")
    return release


def write_record(stage: Path, record: dict) -> None:
    atomic_write(stage / "build.json", json.dumps(record, indent=2) + "\n")


def read_record(installed: Path) -> dict | None:
    """The build.json of a kernel `kbisect kernels build` installed at `installed`, or None
    (nothing finished is there, or it is not one of ours)."""
    try:
        data = json.loads((installed / "build.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def locked_obj(plan: BuildPlan):
    """The build directory's lock: one build at a time per tree and config."""
    obj = obj_dir(plan)
    obj.mkdir(parents=True, exist_ok=True)
    return obj, cache.locked(obj)
