"""Kernel configs as data: reading a .config, the guest config kbisect's VMs need, and the
`kconfig:` requirements reproducers declare.

A built kernel must boot in kbisect's guest (virtio disks and network, a serial console, the
pvpanic device, ext4 root, devtmpfs) and carry what every reproducer of the catalog uses (veth,
GRE, IPVS, netem, BPF for bpftrace...). `olddefconfig` silently drops an option whose
dependencies are not met, so a requirement is checked against the *resulting* .config and an
unmet one stops the build early with one line, instead of a kernel that boots and then skips
every reproducer for want of a module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

_CONFIG_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_REQUIREMENT_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)(?:=(y|m|n|ym|\S+))?$")

# What kbisect's guest needs from a kernel, on top of the architecture's defconfig (and the
# tree's kvm_guest.config where it has one): the root disk and the modules disk (virtio-blk,
# ext4, built in: the initramfs only loads what is a module), the user network (virtio-net), the
# serial console, pvpanic (a crash is seen at once, not at the run timeout), devtmpfs, the
# network namespaces every reproducer works in, and loadable modules.
GUEST_OPTIONS: dict[str, str] = {
    "CONFIG_64BIT": "y",
    "CONFIG_MODULES": "y",
    "CONFIG_MODULE_UNLOAD": "y",
    "CONFIG_PCI": "y",
    "CONFIG_VIRTIO": "y",
    "CONFIG_VIRTIO_PCI": "y",
    "CONFIG_VIRTIO_BLK": "y",
    "CONFIG_VIRTIO_NET": "y",
    "CONFIG_HW_RANDOM_VIRTIO": "y",
    "CONFIG_EXT4_FS": "y",
    "CONFIG_DEVTMPFS": "y",
    "CONFIG_DEVTMPFS_MOUNT": "y",
    "CONFIG_BLK_DEV_INITRD": "y",
    "CONFIG_RD_GZIP": "y",
    "CONFIG_SERIAL_8250": "y",
    "CONFIG_SERIAL_8250_CONSOLE": "y",
    "CONFIG_PVPANIC": "y",
    "CONFIG_PVPANIC_MMIO": "y",
    "CONFIG_NET": "y",
    "CONFIG_INET": "y",
    "CONFIG_IPV6": "y",
    "CONFIG_UNIX": "y",
    "CONFIG_PACKET": "y",
    "CONFIG_NAMESPACES": "y",
    "CONFIG_NET_NS": "y",
    "CONFIG_TMPFS": "y",
    "CONFIG_PROC_FS": "y",
    "CONFIG_SYSFS": "y",
    "CONFIG_UNIX98_PTYS": "y",
    "CONFIG_PRINTK": "y",
    "CONFIG_BUG": "y",
    "CONFIG_IKCONFIG": "y",
    "CONFIG_IKCONFIG_PROC": "y",
}

# The parents the catalog's options need; listing them keeps olddefconfig from dropping the
# options below them on a defconfig that has them off.
PARENT_OPTIONS: dict[str, str] = {
    "CONFIG_NETFILTER": "y",
    "CONFIG_NETFILTER_ADVANCED": "y",
    "CONFIG_NET_SCHED": "y",
    "CONFIG_NET_CLS": "y",
    "CONFIG_NET_CLS_ACT": "y",
    "CONFIG_IP_ADVANCED_ROUTER": "y",
    "CONFIG_BPF": "y",
    "CONFIG_BPF_SYSCALL": "y",
    "CONFIG_BPF_JIT": "y",
    "CONFIG_KPROBES": "y",
    "CONFIG_FTRACE": "y",
}


# What the guest never has, turned off to make the build smaller (the idea of virtme-ng's
# minimal config: defconfig minus the hardware a VM does not have). On 2 cores the full
# defconfig compiles at ~150 objects a minute; each subsystem here is hundreds of objects.
GUEST_OFF: tuple[str, ...] = (
    "CONFIG_SOUND", "CONFIG_DRM", "CONFIG_AGP", "CONFIG_USB_SUPPORT", "CONFIG_HID", "CONFIG_I2C",
    "CONFIG_WLAN", "CONFIG_WIRELESS", "CONFIG_CFG80211", "CONFIG_RFKILL", "CONFIG_BT", "CONFIG_ETHERNET",
    "CONFIG_ATA", "CONFIG_MD", "CONFIG_INFINIBAND", "CONFIG_PCCARD", "CONFIG_NETWORK_FILESYSTEMS",
    "CONFIG_AUDIT", "CONFIG_SECURITY", "CONFIG_CPU_FREQ", "CONFIG_HIBERNATION", "CONFIG_SUSPEND",
    "CONFIG_MACINTOSH_DRIVERS", "CONFIG_KVM", "CONFIG_INPUT_JOYSTICK", "CONFIG_INPUT_TABLET",
    "CONFIG_INPUT_TOUCHSCREEN", "CONFIG_LOCALVERSION_AUTO",
)


# What a requirement needs set beside it that olddefconfig would not choose by itself. BTF is
# generated from DWARF debug info (lib/Kconfig.debug: DEBUG_INFO_BTF sits under DEBUG_INFO,
# whose "Debug information" choice defaults to DEBUG_INFO_NONE), so asking for BTF alone would
# be dropped and the build refused as unmet; the toolchain's default DWARF version is the choice
# every compiler kbisect meets supports.
IMPLIES: dict[str, dict[str, str]] = {
    "CONFIG_DEBUG_INFO_BTF": {"CONFIG_DEBUG_INFO_NONE": "n", "CONFIG_DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT": "y"},
}


def parse_kconfig(text: str) -> dict[str, str]:
    """A kernel .config as {CONFIG_NAME: value}; `# CONFIG_X is not set` lines are left out."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        m = _CONFIG_RE.match(line.strip())
        if m:
            value = m.group(2)
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            values[m.group(1)] = value
    return values


@dataclass(frozen=True)
class Requirement:
    """`CONFIG_X` (built in or a module), `CONFIG_X=y`, `CONFIG_X=m`, `CONFIG_X=n`, or a value."""

    name: str
    want: str = "ym"

    @classmethod
    def parse(cls, text: str) -> "Requirement":
        m = _REQUIREMENT_RE.match(text.strip())
        if not m:
            raise ValueError(f"{text!r} is not CONFIG_NAME or CONFIG_NAME=VALUE")
        return cls(m.group(1), m.group(2) or "ym")

    def met_by(self, config: dict[str, str]) -> bool:
        have = config.get(self.name, "n")
        if self.want in ("ym", "y", "m", "n"):
            return have in self.want if self.want == "ym" else have == self.want
        return have == self.want

    def fragment_value(self) -> str:
        """What to write into a config fragment for it: a module where either will do (smaller vmlinux)."""
        return "m" if self.want == "ym" else self.want

    def __str__(self) -> str:
        return self.name if self.want == "ym" else f"{self.name}={self.want}"


def guest_fragment(requirements: list[Requirement], overrides: Iterable[Requirement] = ()) -> dict[str, str]:
    """The options a guest build sets after defconfig: the guest's, the parents, the requirements,
    then the overrides (`kernels build --kconfig`).

    An option the guest needs built in stays built in when a reproducer would settle for a module.
    An override sets only its own option: what a requirement implied stays (the catalog's config
    with CONFIG_DEBUG_INFO_BTF=n keeps the DWARF debug info BTF brought, so every object is
    compiled with the same flags and only the link differs)."""
    out = {name: "n" for name in GUEST_OFF}
    out.update(PARENT_OPTIONS)
    for req in requirements:
        if req.want != "n":
            out.update(IMPLIES.get(req.name, {}))
        out[req.name] = req.fragment_value()
    for req in overrides:
        out[req.name] = req.fragment_value()
    out.update(GUEST_OPTIONS)
    return out


def overridden(requirements: Iterable[Requirement], overrides: Iterable[Requirement]) -> list[Requirement]:
    """What a build must meet: the requirements, each one an override names replaced by the override."""
    overrides = list(overrides)
    names = {o.name for o in overrides}
    return [r for r in requirements if r.name not in names] + overrides


def check_overrides(overrides: Iterable[Requirement]) -> None:
    """An override may not take away what kbisect's guest needs to boot (it would only be undone
    by the fragment, silently): refused with the option's name."""
    for req in overrides:
        if req.name in GUEST_OPTIONS and not Requirement(req.name, GUEST_OPTIONS[req.name]).met_by(
                {req.name: req.fragment_value()}):
            raise ValueError(f"{req}: kbisect's guest needs {req.name}={GUEST_OPTIONS[req.name]}")


def fragment_text(options: dict[str, str]) -> str:
    """A .config fragment (`# CONFIG_X is not set` for n)."""
    lines = []
    for name, value in options.items():
        lines.append(f"# {name} is not set" if value == "n" else f"{name}={value}")
    return "\n".join(lines) + "\n"


def unmet(requirements: list[Requirement], config: dict[str, str]) -> list[str]:
    """The requirements `config` does not meet, each as "CONFIG_X=y (have m)"."""
    return [f"{req} (have {config.get(req.name, 'n')})" for req in requirements if not req.met_by(config)]


def config_diff(old: dict[str, str], new: dict[str, str]) -> list[tuple[str, str, str]]:
    """(option, old value, new value) for every option that differs ("n" for unset), sorted."""
    names = sorted(set(old) | set(new))
    return [(n, old.get(n, "n"), new.get(n, "n")) for n in names if old.get(n, "n") != new.get(n, "n")]


@dataclass(frozen=True)
class ConfigChange:
    """One option that differs between two kernels' configs, and why it matters to a bug if it does."""

    option: str
    old: str  # "n" when unset
    new: str
    why: str = ""  # "" (not the bug's), "declared in kconfig:", "defined under net/ipv4/"

    def to_json(self) -> dict[str, str]:
        return {"option": self.option, "old": self.old, "new": self.new, "why": self.why}


def bug_config_diff(old: dict[str, str], new: dict[str, str], declared: Iterable[str] = (),
                    under_paths: dict[str, str] | None = None) -> list[ConfigChange]:
    """The options that differ between last good and first bad, the bug's first.

    A prebuilt kernel can go bad through its config alone, and then no commit is to blame. An
    option is the bug's when its `kconfig:` declares it, or when a Kconfig file in a directory
    of its paths defines it (`under_paths`: option -> that directory, read from a source tree)."""
    declared = set(declared)
    under_paths = under_paths or {}
    changes = []
    for name, was, now in config_diff(old, new):
        why = ("declared in kconfig:" if name in declared else
               f"defined under {under_paths[name]}" if name in under_paths else "")
        changes.append(ConfigChange(name, was, now, why))
    return sorted(changes, key=lambda c: (not c.why, c.option))


_KCONFIG_DEF_RE = re.compile(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$", re.MULTILINE)


def kconfig_defines(text: str) -> list[str]:
    """CONFIG_ names a Kconfig file defines (`config X`, `menuconfig X`)."""
    return [f"CONFIG_{m}" for m in _KCONFIG_DEF_RE.findall(text)]
