#!/usr/bin/env python3
"""Byte offsets of the sk_buff / skb_shared_info fields the gro-inner-th oracle reads, from the
running kernel's BTF (/sys/kernel/btf/vmlinux).

Why: bpftrace casts to `struct sk_buff` need its clang front end, which on some kernels (seen on
Debian 5.10) wants kernel headers the guest does not have. Reading the offsets from BTF here and
giving bpftrace plain `*(uint16 *)(arg0 + N)` reads needs no headers on any kernel with BTF.

usage: btf_offsets.py [BTF_FILE]  -> shell assignments (OFF_HEAD=…), exit 1 with a reason if not found
"""

from __future__ import annotations

import struct
import sys

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FWD, KIND_TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC = 9, 10, 11, 12, 13, 14, 15
KIND_FLOAT, KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = 16, 17, 18, 19


def parse(data: bytes) -> tuple[list[tuple], bytes]:
    magic, version, flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
    if magic != 0xEB9F:
        raise ValueError("not BTF (bad magic)")
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
    types_start = hdr_len + type_off
    strings = data[hdr_len + str_off: hdr_len + str_off + str_len]
    types: list[tuple] = [None]  # type id 0 is void
    pos, end = types_start, types_start + type_len
    while pos < end:
        name_off, info, size_or_type = struct.unpack_from("<III", data, pos)
        pos += 12
        kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
        members = []
        if kind == KIND_INT or kind in (KIND_VAR, KIND_DECL_TAG):
            pos += 4
        elif kind == KIND_ARRAY:
            pos += 12
        elif kind in (KIND_STRUCT, KIND_UNION):
            for _ in range(vlen):
                m_name, m_type, m_off = struct.unpack_from("<III", data, pos)
                pos += 12
                bit_off = m_off & 0xFFFFFF if kflag else m_off
                bit_size = m_off >> 24 if kflag else 0
                members.append((m_name, m_type, bit_off, bit_size))
        elif kind == KIND_ENUM:
            pos += 8 * vlen
        elif kind in (KIND_FUNC_PROTO,):
            pos += 8 * vlen
        elif kind in (KIND_DATASEC, KIND_ENUM64):
            pos += 12 * vlen
        types.append((kind, name_off, size_or_type, members, kflag))
    return types, strings


def name(strings: bytes, off: int) -> str:
    return strings[off: strings.index(b"\0", off)].decode()


def fields(types, strings, type_id: int, base_bits: int = 0, out: dict | None = None) -> dict:
    """Flatten a struct's members (through anonymous structs/unions) to name -> (bit offset, bit size, type id)."""
    out = {} if out is None else out
    for m_name, m_type, bit_off, bit_size in types[type_id][3]:
        n = name(strings, m_name) if m_name else ""
        t = m_type
        while types[t] and types[t][0] in (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG):
            t = types[t][2]
        if not n and types[t] and types[t][0] in (KIND_STRUCT, KIND_UNION):
            fields(types, strings, t, base_bits + bit_off, out)
        elif n and n not in out:
            out[n] = (base_bits + bit_off, bit_size, t)
    return out


def find_struct(types, strings, wanted: str) -> int:
    for i, t in enumerate(types):
        if t and t[0] == KIND_STRUCT and t[3] and name(strings, t[1]) == wanted:
            return i
    raise KeyError(f"struct {wanted} not in BTF")


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "/sys/kernel/btf/vmlinux"
    try:
        with open(path, "rb") as fh:
            types, strings = parse(fh.read())
        skb = fields(types, strings, find_struct(types, strings, "sk_buff"))
        shinfo = fields(types, strings, find_struct(types, strings, "skb_shared_info"))
        out = {}
        for key, field in (("HEAD", "head"), ("END", "end"), ("NH", "network_header"), ("TH", "transport_header"),
                           ("INH", "inner_network_header"), ("ITH", "inner_transport_header"), ("LEN", "len")):
            bits, size, _ = skb[field]
            if bits % 8 or size:
                raise KeyError(f"sk_buff.{field} is not byte aligned")
            out[key] = bits // 8
        bits, size, _ = skb["encapsulation"]
        out["ENC_BYTE"], out["ENC_MASK"] = bits // 8, 1 << (bits % 8)
        for key, field in (("GSO_SIZE", "gso_size"), ("GSO_SEGS", "gso_segs")):
            bits, size, _ = shinfo[field]
            out[key] = bits // 8
    except (OSError, ValueError, KeyError, IndexError, struct.error) as exc:
        print(f"cannot read sk_buff offsets from {path}: {exc}")
        return 1
    for key, value in out.items():
        print(f"OFF_{key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
