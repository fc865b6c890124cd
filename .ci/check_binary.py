#!/usr/bin/env python3
"""Checks a built entitlement-gate binary without running it (so it works for arm64 on amd64).

Usage: check_binary.py BINARY amd64|arm64

- ELF, 64-bit, little-endian, for the named architecture;
- static-pie: position-independent (ELF type DYN, so the kernel randomises its address) yet with
  no program interpreter (PT_INTERP), so no dynamic loader or shared library is involved;
- carries cargo-auditable's dependency list (section .dep-v0: zlib-compressed JSON), the way image
  scanners (Trivy, Grype, Amazon Inspector) read the Rust crates inside, with the gate as its root
  package and its security-relevant dependencies present.
"""

import json
import struct
import sys
import zlib

MACHINES = {"amd64": 0x3E, "arm64": 0xB7}
ET_DYN, PT_INTERP = 3, 3
# Crates whose presence in the list shows it is the gate's own, complete graph.
EXPECTED = {"entitlement-gate", "aws-lc-sys", "aws-lc-rs", "rustls", "jsonwebtoken", "aws-sdk-marketplacemetering"}


def fail(message):
    sys.exit(f"check_binary: {message}")


def main(path, arch):
    data = open(path, "rb").read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        fail(f"{path}: not a 64-bit little-endian ELF file")
    (e_type, e_machine, _, _, e_phoff, e_shoff, _, _, e_phentsize, e_phnum, e_shentsize, e_shnum,
     e_shstrndx) = struct.unpack_from("<HHIQQQIHHHHHH", data, 16)
    if e_machine != MACHINES[arch]:
        fail(f"{path}: ELF machine {e_machine:#x}, expected {MACHINES[arch]:#x} ({arch})")
    segments = [struct.unpack_from("<I", data, e_phoff + i * e_phentsize)[0] for i in range(e_phnum)]
    if PT_INTERP in segments:
        fail(f"{path}: dynamically linked (has a program interpreter)")
    if e_type != ET_DYN:
        fail(f"{path}: not position-independent (ELF type {e_type}, expected {ET_DYN}: static-pie)")

    def section(index):
        name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", data, e_shoff + index * e_shentsize)
        return name, offset, size

    _, names_offset, _ = section(e_shstrndx)
    sections = {}
    for index in range(e_shnum):
        name, offset, size = section(index)
        end = data.index(b"\0", names_offset + name)
        sections[data[names_offset + name:end].decode()] = (offset, size)
    if ".dep-v0" not in sections:
        fail(f"{path}: no .dep-v0 section: not built with cargo auditable")
    offset, size = sections[".dep-v0"]
    audit = json.loads(zlib.decompress(data[offset:offset + size]))
    packages = audit["packages"]
    names = {p["name"] for p in packages}
    roots = [p["name"] for p in packages if p.get("root")]
    if roots != ["entitlement-gate"]:
        fail(f"{path}: dependency list root is {roots}, expected entitlement-gate")
    missing = EXPECTED - names
    if missing:
        fail(f"{path}: dependency list lacks {sorted(missing)}")
    lc = next(p["version"] for p in packages if p["name"] == "aws-lc-sys")
    print(f"{path}: static-pie ELF for {arch}, {len(data):,} bytes; .dep-v0 lists {len(packages)} crates "
          f"(root entitlement-gate, aws-lc-sys {lc})")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[2] not in MACHINES:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
