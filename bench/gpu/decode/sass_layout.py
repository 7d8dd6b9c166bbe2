#!/usr/bin/env python3
"""Where a kernel's code jumps, read on a machine without a disassembler (nvcc 13 here has ptxas, no cuobjdump).

Decodes the few sm_90 SASS opcodes that show a kernel's layout (branches with their targets, barriers, the async
copies, matrix instructions, loads and stores, exits) from a cubin's .text section, by their opcode bits; learned from
cuobjdump dumps of the decode kernels on the H100 (bench/gpu/decode/NOTES.md, runs 9-10: every branch target of
three 5,000-7,000-instruction kernels equal to cuobjdump's). Anything else is skipped, so this is a map, not a listing.

  sass_layout.py KERNEL.cubin MANGLED_NAME   the map of one kernel (nvcc -cubin -arch=sm_90a ...)
  sass_layout.py DUMP.sass                   checks the decoder against a cuobjdump -sass dump (prints mismatches)
"""
import re
import struct
import sys

OPCODES = {0x947: "BRA", 0xfae: "LDGSTS", 0x91a: "DEPBAR", 0xb1d: "BAR", 0x23c: "HMMA", 0x94d: "EXIT", 0x944: "CALL",
           0x950: "RET", 0x981: "LDG", 0x986: "STG", 0x992: "MEMBAR", 0x83b: "LDSM", 0x308: "MUFU", 0xf89: "SHFL",
           0x983: "LDL", 0x387: "STL"}
RUNS = ("HMMA", "LDGSTS", "LDSM", "MUFU", "SHFL", "LDG", "STG", "STL", "LDL")


def branch_target(address, low, high):
    """A BRA's offset / 4 is split: bits 16-23 of the low word, then from bit 34 on into the high word."""
    value = ((low >> 16) & 0xff) | (((low >> 34) | ((high & 0x3ffff) << 30)) << 8)
    if value >> 55:
        value -= 1 << 56
    return address + 16 + 4 * value


def text_words(path, kernel):
    data = open(path, "rb").read()
    offset = struct.unpack_from("<Q", data, 0x28)[0]
    size, count, names = struct.unpack_from("<HHH", data, 0x3a)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, offset + i * size) for i in range(count)]
    strings = sections[names][4]
    name = lambda at: data[strings + at:data.index(b"\0", strings + at)].decode()
    for section in sections:
        if name(section[0]) == ".text." + kernel:
            raw = data[section[4]:section[4] + section[5]]
            return list(struct.unpack("<%dQ" % (len(raw) // 8), raw))
    raise SystemExit(f"no .text.{kernel} in {path}")


def layout(words):
    lines = []
    for index in range(0, len(words), 2):
        address, low, high = 8 * index, words[index], words[index + 1]
        op = OPCODES.get(low & 0xfff)
        if op is None:
            continue
        if op == "BRA":
            target = branch_target(address, low, high)
            predicated = (low >> 12) & 0xf != 7  # PT: unconditional
            lines.append(f"{address:#07x} BRA{'(p)' if predicated else ''} -> {target:#x} ({target - address:+d} B)")
        elif op in RUNS and lines and lines[-1].split()[1] == op:  # "ADDRESS OP xN": one more of the run
            head, _, count = lines[-1].rpartition(" x")
            lines[-1] = f"{head} x{int(count) + 1}"
        else:
            lines.append(f"{address:#07x} {op}" + (" x1" if op in RUNS else ""))
    return [f"{len(words) // 2} instructions, {len(words) * 8} bytes"] + lines


def check_dump(path):
    text = open(path).read().splitlines()
    words, branches = [], {}
    for i, line in enumerate(text):
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s*(.*?);\s*/\* (0x[0-9a-f]{16}) \*/", line)
        if m:
            words += [int(m.group(3), 16), int(re.search(r"/\* (0x[0-9a-f]{16}) \*/", text[i + 1]).group(1), 16)]
            target = re.search(r"\bBRA\b.*?0x([0-9a-f]+)\s*$", m.group(2))
            if target:
                branches[int(m.group(1), 16)] = int(target.group(1), 16)
    wrong = [a for a, t in branches.items() if branch_target(a, words[a // 8], words[a // 8 + 1]) != t]
    print(f"{len(branches)} branches, {len(wrong)} decoded differently: {[hex(a) for a in wrong[:10]]}")


if __name__ == "__main__":
    if sys.argv[1].endswith(".sass"):
        check_dump(sys.argv[1])
    else:
        print("\n".join(layout(text_words(sys.argv[1], sys.argv[2]))))
