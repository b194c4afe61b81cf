"""Kernel configs and kbuild Makefiles, read just far enough to tell a module from vmlinux code.

Pure text in, plans out: nothing here touches files, so every rule is testable with a string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from orchestrator.core.errors import BuiltInCode, KbisectError

_CONFIG_REF_RE = re.compile(r"^\$\((CONFIG_[A-Za-z0-9_]+)\)$")
_ASSIGN_RE = re.compile(r"^([A-Za-z0-9_.]+?)-(y|m|objs|\$\((CONFIG_[A-Za-z0-9_]+)\))\s*(\+=|:=|=)\s*(.*)$")
_FLAGS_RE = re.compile(r"^((?:ccflags|asflags|subdir-ccflags)-(?:y|\$\(CONFIG_[A-Za-z0-9_]+\))|CFLAGS_[A-Za-z0-9_.-]+"
                       r"|AFLAGS_[A-Za-z0-9_.-]+|CFLAGS_REMOVE_[A-Za-z0-9_.-]+)\s*(\+=|:=|=)\s*(.*)$")
_PER_OBJECT_FLAGS_RE = re.compile(r"^(CFLAGS|AFLAGS|CFLAGS_REMOVE)_")
_VAR_ASSIGN_RE = re.compile(r"^([A-Za-z0-9_.$()-]+?)\s*(\+=|:=|=)\s*(.*)$")
_VAR_REF_RE = re.compile(r"\$\(([A-Za-z0-9_.-]+)\)")
_DIRECTIVES = ("ifeq", "ifneq", "ifdef", "ifndef", "include", "-include")
_BUILT = ("y", "m")


@dataclass(frozen=True)
class MakeAssignment:
    """One `<target>-<cond> [+:]= words` line of a kbuild Makefile, continuations joined."""

    target: str  # "obj", "ip_tunnel", "lib", "ccflags", "CFLAGS_foo.o" ...
    cond: str  # "y", "m", "objs", "$(CONFIG_X)" or "" for lines such as CFLAGS_foo.o
    words: tuple[str, ...]
    line: str


def _logical_lines(text: str) -> list[str]:
    """Makefile lines with comments dropped and backslash continuations joined."""
    out: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0] if not raw.lstrip().startswith("\t") else raw
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        if buf.strip():
            out.append(buf.strip())
        buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


def parse_kbuild(text: str) -> tuple[list[MakeAssignment], list[str]]:
    """The object assignments and compiler-flag lines of a directory's Makefile/Kbuild.

    Deliberately small: kbisect only needs `obj-*`, composite `<module>-*` lists and flag
    lines; conditionals (ifeq/ifdef) are not evaluated, which is why the final decision is
    cross-checked against the modules the base kernel actually ships.
    """
    assigns: list[MakeAssignment] = []
    flags: list[str] = []
    for line in _logical_lines(text):
        m = _ASSIGN_RE.match(line)
        if m and not m.group(1).startswith(("ccflags", "asflags", "subdir-ccflags", "ldflags")):
            assigns.append(MakeAssignment(m.group(1), m.group(2), tuple(m.group(5).split()), line))
            continue
        if _FLAGS_RE.match(line):
            flags.append(line)
    return assigns, flags


def make_variables(text: str, kconfig: dict[str, str]) -> dict[str, list[str]]:
    """Every simple variable a kbuild Makefile assigns, with `$(CONFIG_X)` in names substituted.

    Composite modules often list their objects through helper variables
    (`ip_vs-objs := ... $(ip_vs_proto-objs-y)` with `ip_vs_proto-objs-$(CONFIG_IP_VS_PROTO_TCP) += ...`);
    linking a module from its literal words alone leaves symbols undefined.
    """
    values: dict[str, list[str]] = {}
    for line in _logical_lines(text):
        m = _VAR_ASSIGN_RE.match(line)
        if not m or line.startswith(_DIRECTIVES):
            continue
        name = re.sub(r"\$\((CONFIG_[A-Za-z0-9_]+)\)", lambda c: kconfig.get(c.group(1), ""), m.group(1))
        if "$(" in name:
            continue
        words = m.group(3).split()
        values[name] = values.get(name, []) + words if m.group(2) == "+=" else words
    return values


def expand_words(words: list[str] | tuple[str, ...], variables: dict[str, list[str]], depth: int = 0) -> list[str]:
    """Words with `$(var)` references replaced by the variable's (recursively expanded) words."""
    out: list[str] = []
    for word in words:
        ref = _VAR_REF_RE.fullmatch(word)
        if ref and not ref.group(1).startswith("CONFIG_"):
            if depth < 8:
                out.extend(expand_words(variables.get(ref.group(1), []), variables, depth + 1))
            continue
        out.append(word)
    return out


def _cond_value(cond: str, kconfig: dict[str, str]) -> str:
    """What a kbuild condition expands to: "y", "m" or "" (not built)."""
    if cond in _BUILT:
        return cond
    if cond == "objs":
        return "y"
    m = _CONFIG_REF_RE.match(cond)
    if m:
        value = kconfig.get(m.group(1), "")
        return value if value in _BUILT else ""
    return ""


def _cond_text(cond: str, kconfig: dict[str, str]) -> str:
    """A condition for a message: `obj-y`, or `CONFIG_X=m` with the kernel's value (n when unset)."""
    if cond in _BUILT:
        return f"obj-{cond}"
    name = cond[2:-1]
    return f"{name}={kconfig.get(name, 'n')}"


@dataclass
class ModulePlan:
    """One module to rebuild: where it lives and which objects it is linked from."""

    directory: str  # "net/ipv4"
    module: str  # "ip_tunnel"
    members: list[str]  # object files, "ip_tunnel.o" (relative to directory)
    condition: str  # e.g. "CONFIG_NET_IP_TUNNEL=m", for the record
    flag_lines: list[str] = field(default_factory=list)

    @property
    def sources(self) -> list[str]:
        return [m[:-2] for m in self.members]  # stems; .c or .S decided by what exists


Placement = tuple[str, str]  # ("y" | "m" | "", condition text)


def _placement(obj_lines: list[MakeAssignment], target_obj: str, kconfig: dict[str, str]) -> Placement | None:
    """Where `target_obj` ends up according to the obj-* lines, or None when no line names it."""
    best: Placement | None = None
    for a in obj_lines:
        if target_obj in a.words:
            value = _cond_value(a.cond, kconfig)
            # Built-in wins over module: kbuild drops obj-m entries that are also obj-y.
            if value == "y" or best is None or (value == "m" and best[0] == ""):
                best = (value, _cond_text(a.cond, kconfig))
    return best


def _members(assigns: list[MakeAssignment], module: str, makefile_text: str, kconfig: dict[str, str]) -> list[str]:
    """The objects a composite module links, helper variables expanded, switched-off ones left out."""
    variables = make_variables(makefile_text, kconfig)
    members: list[str] = []
    for b in assigns:
        if b.target == module and _cond_value(b.cond, kconfig) in _BUILT:
            members.extend(w for w in expand_words(b.words, variables) if w.endswith(".o") and w not in members)
    return members


def _composite(assigns: list[MakeAssignment], obj: str, makefile_text: str, kconfig: dict[str, str],
               where: str) -> tuple[Placement, str, list[str]] | None:
    """(placement, module, members) of the composite module that lists `obj`, if one does."""
    obj_lines = [a for a in assigns if a.target == "obj"]
    for a in assigns:
        if a.target in ("obj", "lib") or obj not in a.words:
            continue
        composite = _placement(obj_lines, a.target + ".o", kconfig)
        if composite is None:
            continue
        if _cond_value(a.cond, kconfig) not in _BUILT:
            unset = a.cond[2:-1] if a.cond.startswith("$(") else a.cond
            raise KbisectError(f"{where} is not compiled in this kernel ({unset} is not set)")
        return composite, a.target, _members(assigns, a.target, makefile_text, kconfig)
    return None


def _refuse_unless_module(placement: Placement | None, where: str, obj: str, directory: str,
                          assigns: list[MakeAssignment]) -> str:
    """The condition text of a module placement; anything else is a one-line refusal."""
    if placement is None:
        if any(obj in a.words for a in assigns if a.target == "lib"):
            raise BuiltInCode(f"{where} is built-in code (lib-y, linked into vmlinux); kbisect can only rebuild modules")
        raise KbisectError(f"cannot tell how {where} is built: {obj} is not in an obj-* or composite line "
                           f"of {directory}/Makefile")
    value, cond_text = placement
    if value == "y":
        raise BuiltInCode(f"{where} is built-in code ({cond_text}: compiled into vmlinux); "
                           "kbisect can only rebuild modules")
    if value != "m":
        raise KbisectError(f"{where} is not compiled in this kernel ({cond_text})")
    return cond_text


def _flags_for(flags: list[str], members: list[str]) -> list[str]:
    """Directory-wide flag lines, and per-object ones only for the objects being rebuilt."""
    def wanted(line: str) -> bool:
        if not _PER_OBJECT_FLAGS_RE.match(line):
            return True
        return any(re.match(rf"^(CFLAGS|AFLAGS|CFLAGS_REMOVE)_{re.escape(m)}\s", line) for m in members)

    return [f for f in flags if wanted(f)]


def plan_module(directory: str, makefile_text: str, source_name: str, kconfig: dict[str, str]) -> ModulePlan:
    """Decide whether `<directory>/<source_name>` is compiled into a module or into vmlinux.

    Reads the directory's Makefile/Kbuild: `obj-$(CONFIG_X) += foo.o` makes foo a module when
    CONFIG_X=m and built-in when CONFIG_X=y; an object listed in a composite `<mod>-y`/`<mod>-objs`
    inherits the placement of `<mod>.o`. Built-in or unbuilt code is refused with one line,
    because replacing a module cannot change vmlinux.
    """
    obj = PurePosixPath(source_name).stem + ".o"
    where = f"{directory}/{source_name}"
    assigns, flags = parse_kbuild(makefile_text)
    placement = _placement([a for a in assigns if a.target == "obj"], obj, kconfig)
    module, members = obj[:-2], [obj]
    if placement is None:  # not a direct object: a composite object may list it
        found = _composite(assigns, obj, makefile_text, kconfig, where)
        if found is not None:
            placement, module, members = found
    condition = _refuse_unless_module(placement, where, obj, directory, assigns)
    return ModulePlan(directory, module, members, condition, _flags_for(flags, members))


def kbuild_for(plans: list[ModulePlan]) -> str:
    """The Kbuild file for one out-of-tree build directory: only the modules being rebuilt."""
    lines = ["# generated by kbisect: rebuild only the modules a patch touches"]
    for p in plans:
        lines.extend(f for f in p.flag_lines if f not in lines)
    for p in plans:
        lines.append(f"obj-m += {p.module}.o")
        if p.members != [p.module + ".o"]:
            lines.append(f"{p.module}-y := {' '.join(p.members)}")
    return "\n".join(lines) + "\n"
