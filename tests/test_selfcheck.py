"""The self-check proves the planned bytes, not the writer's word: an output
that differs from the input plus the plan in any relocation field is refused,
and the message names what differs.

The corruptions are made on the bytes apply() produced (what a bug in the
editor or the writer would hand over), located independently with pyelftools.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from lp_rewrite.apply import apply, plan
from lp_rewrite.errors import VerificationError
from lp_rewrite.pipeline import analyse, prove_edit
from lp_rewrite.policy import Policy
from tests.conftest import COMMITTED

PAYLOADS = {
    "rela": COMMITTED / "x86_64" / "keyhandler.livepatch",
    "rel": COMMITTED / "arm" / "keyhandler.livepatch",
}


def _rewritten(path: Path) -> tuple[Callable[[bytes], None], bytes]:
    """The proof of one rewrite, and the bytes apply() planned."""
    policy = Policy()
    analysis = analyse(path, policy)
    edits = plan(analysis.payload, analysis.funcs, analysis.decisions, policy)
    data = apply(analysis.payload, analysis.funcs, edits)
    assert edits.retargets, "the fixture has a reference to retarget"
    return lambda out: prove_edit(analysis, edits, out, policy), data


def _relocations(data: bytes) -> dict[str, list[tuple[int, int, int]]]:
    """Per relocation section: (file offset, entry size, symbol index) of each entry, read by pyelftools."""
    elf = ELFFile(io.BytesIO(data))
    out = {}
    for sec in elf.iter_sections():
        if isinstance(sec, RelocationSection):
            at, ent = sec["sh_offset"], sec["sh_entsize"]
            out[sec.name] = [(at + k * ent, ent, r["r_info_sym"]) for k, r in enumerate(sec.iter_relocations())]
    return out


def _alias_entries(path: Path, data: bytes) -> list[tuple[int, int, int]]:
    """The entries the rewrite retargeted: those naming another symbol than in the input."""
    before, after = _relocations(path.read_bytes()), _relocations(data)
    return [
        new for name, rows in after.items() for old, new in zip(before[name], rows, strict=True) if old[2] != new[2]
    ]


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_the_planned_bytes_pass(kind: str) -> None:
    prove, data = _rewritten(PAYLOADS[kind])
    prove(data)


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_a_written_result_gives_the_bytes_written(kind: str, tmp_path: Path) -> None:
    """The pieces go once the file is proven to be them; the result's output is made again, the same."""
    from lp_rewrite.pipeline import rewrite

    result = rewrite(PAYLOADS[kind], tmp_path / "out")
    assert result.changed and result.written == tmp_path / "out"
    assert result.output == (tmp_path / "out").read_bytes() == rewrite(PAYLOADS[kind]).output
    same = rewrite(tmp_path / "out", tmp_path / "again")  # nothing to do: the input's bytes
    assert not same.changed and same.output == (tmp_path / "again").read_bytes() == result.output


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_a_moved_place_is_refused(kind: str) -> None:
    prove, data = _rewritten(PAYLOADS[kind])
    at, _ent, _sym = _alias_entries(PAYLOADS[kind], data)[0]
    bad = bytearray(data)
    bad[at] ^= 0x04  # r_offset
    with pytest.raises(VerificationError, match="places or types changed"):
        prove(bytes(bad))


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_a_retarget_to_another_symbol_is_refused(kind: str) -> None:
    prove, data = _rewritten(PAYLOADS[kind])
    at, ent, sym = _alias_entries(PAYLOADS[kind], data)[0]
    bad = bytearray(data)
    if ent in (24, 16):  # ELF64: r_sym is the high word of r_info
        struct.pack_into("<I", bad, at + 12, sym - 1)
    else:  # ELF32: r_info is sym << 8 | type
        (info,) = struct.unpack_from("<I", bad, at + 4)
        struct.pack_into("<I", bad, at + 4, ((sym - 1) << 8) | (info & 0xFF))
    with pytest.raises(VerificationError, match=re.escape(f"symbol {sym - 1}, expected {sym}")):
        prove(bytes(bad))


def test_a_changed_addend_is_refused() -> None:
    prove, data = _rewritten(PAYLOADS["rela"])
    at, _ent, _sym = _alias_entries(PAYLOADS["rela"], data)[0]
    bad = bytearray(data)
    (addend,) = struct.unpack_from("<q", bad, at + 16)
    struct.pack_into("<q", bad, at + 16, addend + 8)
    with pytest.raises(VerificationError, match="an addend changed unexpectedly"):
        prove(bytes(bad))


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_an_entry_of_an_untouched_table_is_refused(kind: str) -> None:
    """A table the plan does not edit must be the input's, byte for byte."""
    prove, data = _rewritten(PAYLOADS[kind])
    edited = [at for at, _e, _s in _alias_entries(PAYLOADS[kind], data)]
    elf = ELFFile(io.BytesIO(data))
    for sec in elf.iter_sections():
        if sec["sh_type"] not in ("SHT_REL", "SHT_RELA") or not sec["sh_size"]:
            continue
        lo, hi = sec["sh_offset"], sec["sh_offset"] + sec["sh_size"]
        if not any(lo <= at < hi for at in edited):
            break
    else:
        pytest.fail("every relocation table was edited")
    bad = bytearray(data)
    bad[lo] ^= 0x04
    with pytest.raises(VerificationError, match=re.escape(f"{sec.name!r}: contents changed")):
        prove(bytes(bad))
