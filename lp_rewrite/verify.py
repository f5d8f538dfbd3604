"""Pipeline stage 6, *verify*: re-read the written bytes and prove the edit.

Run on every rewrite before the output is renamed into place. It parses the
new image from scratch and checks, against the input:

* the same sections (names, types, flags, links) with identical contents,
  except the symbol/string tables and the relocation data the plan touched;
* every input symbol is still there, identical but for the planned renames;
  every alias is an undefined symbol carrying the original's exact name (or,
  in a prelinked payload, an SHN_ABS one holding the original's address);
* every relocation has the same place and type; only the retargeted ones name
  a different symbol (their alias) with the planned addend;
* identifying and deciding the *output* finds the same replacements and
  nothing left to retarget (so a second run is a no-op).
"""

from __future__ import annotations

from lp_rewrite.apply import Plan
from lp_rewrite.decide import Decision, decide
from lp_rewrite.elf import consts as C
from lp_rewrite.errors import VerificationError
from lp_rewrite.identify import FuncsTable, identify
from lp_rewrite.policy import Policy
from lp_rewrite.read import Payload, read_payload


def _fail(msg: str) -> VerificationError:
    return VerificationError(f"self-check of the rewritten payload failed: {msg}")


def check_rewrite(inp: Payload, funcs: FuncsTable, plan: Plan, data: bytes, policy: Policy) -> Payload:
    """Parse ``data`` and check it is exactly ``inp`` with ``plan`` applied."""
    try:
        out = read_payload(data, name=f"{inp.name} (rewritten)")
    except Exception as exc:  # the output must parse; anything else is our bug
        raise _fail(f"the output does not parse: {exc}") from exc
    _check_sections(inp, out, plan)
    _check_symbols(inp, out, plan)
    _check_relocations(inp, out, plan)
    out_funcs = identify(out)
    if [(r.original, r.entry) for r in out_funcs.replacements] != [(r.original, r.entry) for r in funcs.replacements]:
        raise _fail("the output's .livepatch.funcs no longer identifies the same replacements")
    left = decide(out, out_funcs, policy).retargets
    if left:
        d = left[0]
        raise _fail(f"{out.elf.sections[d.section].name}+{d.offset:#x} still references a replacement's entry")
    return out


def _check_sections(inp: Payload, out: Payload, plan: Plan) -> None:
    a, b = inp.elf, out.elf
    if len(a.sections) != len(b.sections):
        raise _fail(f"section count changed ({len(a.sections)} -> {len(b.sections)})")
    syms = a.symbols
    grown = {a.symtab_index, syms.strtab_index}
    if syms.shndx_section is not None:
        grown.add(syms.shndx_section)
    touched = {d.reloc_section for d in plan.retargets}
    # REL places re-encoded with a new addend: (section, offset) of 4-byte fields.
    rel_places: dict[int, list[int]] = {}
    for d in plan.retargets:
        if a.sections[d.reloc_section].sh_type == C.SHT_REL:
            rel_places.setdefault(d.section, []).append(d.offset)
    renumbered = plan.inserted_count() > 0
    for x, y in zip(a.sections, b.sections, strict=True):
        where = f"section [{x.index}] {x.name!r}"
        same = (x.name, x.sh_type, x.sh_flags, x.sh_link, x.sh_addralign, x.sh_entsize)
        if same != (y.name, y.sh_type, y.sh_flags, y.sh_link, y.sh_addralign, y.sh_entsize):
            raise _fail(f"{where}: header changed")
        if x.index in grown:
            continue
        if x.sh_size != y.sh_size:
            raise _fail(f"{where}: size changed")
        may_differ = x.index in touched or (renumbered and x.sh_type in (C.SHT_REL, C.SHT_RELA))
        if x.sh_info != y.sh_info and not (renumbered and x.sh_type == C.SHT_GROUP):
            raise _fail(f"{where}: sh_info changed")
        if may_differ:
            continue
        old, new = bytearray(a.section_data(x.index)), bytearray(b.section_data(y.index))
        for off in rel_places.get(x.index, ()):
            old[off : off + 4] = new[off : off + 4] = bytes(4)
        if old != new:
            raise _fail(f"{where}: contents changed")


def _check_symbols(inp: Payload, out: Payload, plan: Plan) -> None:
    s, t = inp.elf.symbols, out.elf.symbols
    expected = s.count + plan.inserted_count() + len(plan.appended)
    if t.count != expected:
        raise _fail(f"symbol count {t.count}, expected {expected}")
    remap = plan.index_map()
    order = [remap(i) for i in range(s.count)] if plan.inserts else list(range(s.count))
    for column in ("info", "other", "shndx", "value", "size"):
        old, new = getattr(s, column), getattr(t, column)
        if [new[j] for j in order] != old:
            raise _fail(f"a symbol's {column} changed")
    for i in range(s.count):
        want = plan.renames.get(i)
        if want is None:
            if t.name_off[order[i]] - s.name_off[i] and t.name(order[i]) != s.name(i):
                raise _fail(f"symbol [{i}] {s.name(i)!r} was renamed without a plan")
        elif t.name(order[i]) != want:
            raise _fail(f"symbol [{i}] should be named {want!r}")
    for alias in plan.aliases.values():
        j = alias.index
        if t.shndx[j] != alias.shndx or t.name(j) != alias.name:
            kind = "an absolute" if alias.shndx == C.SHN_ABS else "an undefined"
            raise _fail(f"alias {alias.name!r} is not {kind} symbol of that name")
        if alias.shndx == C.SHN_ABS and t.value[j] != alias.value:
            raise _fail(f"absolute alias {alias.name!r} holds {t.value[j]:#x}, not the original's {alias.value:#x}")


def _check_relocations(inp: Payload, out: Payload, plan: Plan) -> None:
    a, b = inp.elf, out.elf
    remap = plan.index_map()
    by_section: dict[int, list[Decision]] = {}
    for d in plan.retargets:
        by_section.setdefault(d.reloc_section, []).append(d)
    alias_index = {n: plan.aliases[name].index for n, name in plan.alias_for_replacement.items()}
    for idx in a.relocation_sections:
        x, y = a.relocations(idx), b.relocations(idx)
        if x.offsets != y.offsets or x.types != y.types:
            raise _fail(f"relocation section {x.section.name!r}: places or types changed")
        moved = by_section.get(idx, [])
        if not moved and not plan.inserts:
            if y.syms != x.syms or y.addends != x.addends:
                raise _fail(f"relocation section {x.section.name!r} changed without a plan")
            continue
        expect_syms = [remap(v) for v in x.syms] if plan.inserts else list(x.syms)
        expect_add = list(x.addends) if x.addends is not None else None
        for d in moved:
            assert d.replacement is not None
            expect_syms[d.index] = alias_index[d.replacement]
            if expect_add is not None:
                expect_add[d.index] = plan.new_addends[(idx, d.index)]
        if y.syms != expect_syms:
            bad = next(i for i, (p, q) in enumerate(zip(y.syms, expect_syms, strict=True)) if p != q)
            raise _fail(f"{x.section.name!r} entry {bad}: symbol {y.syms[bad]}, expected {expect_syms[bad]}")
        if expect_add is not None and y.addends != expect_add:
            raise _fail(f"{x.section.name!r}: an addend changed unexpectedly")
        if x.addends is None:
            for d in moved:
                got = out.arch.implicit_addend(d.rtype, b.section_data(d.section), d.offset)
                if got != plan.new_addends[(idx, d.index)]:
                    raise _fail(f"{a.sections[d.section].name}+{d.offset:#x}: implicit addend {got}")
