"""The structure-aware mutator of the long run: field edits with boundary values, byte flips, splices, truncation."""

from __future__ import annotations

import random

from lp_fuzz.fields import Fields, locate, read_uint

MAX_LEN = 1 << 16  # fixtures are < 10 KiB; mutants may grow a little


def _value(rng: random.Random, old: int, width: int, ctx: Fields, size: int) -> int:
    bits = 8 * width
    mask = (1 << bits) - 1
    pick = rng.randrange(16)
    if pick == 0:
        return 0
    if pick == 1:
        return rng.choice((1, 2, 3, 4, 8, 16))
    if pick == 2:
        return old + rng.choice((1, -1))
    if pick == 3:
        return old + rng.randint(-64, 64)
    if pick == 4:
        return old ^ (1 << rng.randrange(bits))
    if pick == 5:
        return rng.choice((mask, mask >> 1, (mask >> 1) + 1))
    if pick == 6:
        return rng.getrandbits(bits)
    if pick == 7:
        return size + rng.randint(-16, 16)
    if pick == 8:
        return ctx.shnum + rng.randint(-2, 1)
    if pick == 9:
        return ctx.nsyms + rng.randint(-2, 1)
    if pick == 10:
        return rng.choice((0xFF00, 0xFFF1, 0xFFF2, 0xFFFF, 0xFEFF))
    if pick == 11:
        return 1 << rng.randrange(bits)
    if pick == 12:
        return rng.randrange(max(ctx.shnum, 1))
    if pick == 13:
        return rng.randrange(max(ctx.nsyms, 1))
    if pick == 14:
        return old * 2
    return old // 2


def field_edit(buf: bytearray, rng: random.Random) -> None:
    ctx = locate(buf)
    if not ctx.by_kind:
        return
    kind = rng.choice(sorted(ctx.by_kind))
    off, width = rng.choice(ctx.by_kind[kind])
    old = read_uint(buf, off, width)
    # String bytes: a NUL moved, '#', '.', a letter, a non-ASCII byte, a case flip.
    strings = (0, 0x23, 0x2E, 0x41, 0xFF, old ^ 0x20)
    new = rng.choice(strings) if kind == "str" else _value(rng, old, width, ctx, len(buf))
    buf[off : off + width] = (new & ((1 << (8 * width)) - 1)).to_bytes(width, "little")


def mutate(data: bytes, rng: random.Random, max_len: int = MAX_LEN) -> bytes:
    """One to four stacked mutations, mostly structure-aware."""
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        op = rng.random()
        n = len(buf)
        if op < 0.6 or n == 0:
            field_edit(buf, rng)
        elif op < 0.78:
            pos = rng.randrange(n)
            buf[pos] ^= 1 << rng.randrange(8)
        elif op < 0.83:
            pos = rng.randrange(n)
            buf[pos] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif op < 0.88:
            del buf[rng.randrange(n) :]
        elif op < 0.92:
            a, b = sorted(rng.randrange(n) for _ in range(2))
            del buf[a : min(b, a + 64)]
        elif op < 0.96:
            a = rng.randrange(n)
            chunk = buf[a : a + rng.randint(1, 64)]
            pos = rng.randrange(n)
            buf[pos : pos + len(chunk)] = chunk
        else:
            pos = rng.randrange(n)
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return bytes(buf[:max_len])
