"""Pipeline stage 4, *apply*: turn the retarget decisions into a new image.

Three edits, all by symbol index:

1. **Rename** every defined symbol that names a retargeted replacement's entry
   (the function, GCC's ``.localalias`` and friends) using the policy's
   template. Values are kept, so Xen still sees the symbol as overriding.
2. **Alias**: one undefined symbol per original, named exactly as Xen's
   symbol table names it (``foo`` or ``path/file.c#foo``). An undefined
   symbol of that name already in the payload (the ``old_addr`` one) is
   reused. Default: STB_GLOBAL, appended. With ``local_aliases``,
   file-scoped originals get an STB_LOCAL alias inside their FILE symbol's
   group (which is what livepatch-build-tools' ``prelink`` scopes by), and
   every symbol reference in the object is renumbered. In a prelinked
   payload (a literal ``old_addr``, or ``absolute``) the alias is instead
   SHN_ABS, valued at the original's address (:mod:`lp_rewrite.absolute`).
3. **Retarget**: each decided relocation now names the alias; its addend
   becomes ``A + value(S) - entry`` so that the designated address is the
   alias itself (RELA: the addend field; REL: the place is re-encoded).

Nothing is done for a replacement no relocation needs moving for, so a
payload that is already right comes out byte-identical.

:func:`plan` decides these edits in the input's indices; :func:`apply` hands
them to the ELF editor (:mod:`lp_rewrite.elf.editor`), which does the
mechanics, and keeps the rules that are Xen's (which tables may change).
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Sequence
from itertools import accumulate, compress, count, groupby, repeat
from operator import add, lt

from lp_rewrite.decide import DecisionList, Decisions
from lp_rewrite.elf import consts as C
from lp_rewrite.elf.editor import ElfEditor, IndexMap, NewSymbol
from lp_rewrite.elf.file import SymbolTable, decode_name, encode_name
from lp_rewrite.elf.runs import RelocationRun
from lp_rewrite.elf.writer import Pieces
from lp_rewrite.errors import InputError, UsageError
from lp_rewrite.identify import FuncsTable
from lp_rewrite.policy import Policy
from lp_rewrite.read import Payload
from lp_rewrite.record import Record


class Alias(Record):
    """The symbol a retargeted relocation names instead of the replacement."""

    __slots__ = ("binding", "existing", "index", "name", "shndx", "value")

    def __init__(
        self,
        name: str,
        existing: int | None,  # a symbol already in the payload that serves as the alias
        binding: int,
        index: int = -1,  # its index in the output's symbol table
        # SHN_UNDEF (Xen resolves the name at load), or SHN_ABS holding the
        # original's address (prelinked payloads, lp_rewrite/absolute.py).
        shndx: int = C.SHN_UNDEF,
        value: int = 0,
    ) -> None:
        self.name = name
        self.existing = existing
        self.binding = binding
        self.index = index
        self.shndx = shndx
        self.value = value


class Plan(Record):
    """Everything the rewrite changes, in terms of the input's indices."""

    __slots__ = (
        "addralign",
        "alias_for_replacement",
        "aliases",
        "appended",
        "inserts",
        "new_addends",
        "renames",
        "retargets",
        "symbol_map",
    )

    def __init__(self, retargets: DecisionList | None = None) -> None:
        self.aliases: dict[str, Alias] = {}
        self.renames: dict[int, str] = {}  # symbol index -> new name
        # The retarget decisions, as columns (the decision list's own, shared).
        self.retargets = DecisionList() if retargets is None else retargets
        # Local symbols inserted before input index `pos`: (pos, symbols) in order.
        self.inserts: list[tuple[int, list[NewSymbol]]] = []
        self.appended: list[NewSymbol] = []
        # The addend each retarget gets, in the order of ``retargets`` (a list, not a dict
        # keyed by place: a stress object has 64k of them, most the same small int).
        self.new_addends: list[int] = []
        self.alias_for_replacement: dict[int, str] = {}
        # Section index -> new sh_addralign (--align-notes: the notes Xen reads, lp_rewrite/notes.py).
        self.addralign: dict[int, int] = {}
        # Input symbol index -> output symbol index: the editor's, recorded by apply().
        self.symbol_map: IndexMap | None = None

    def by_table(self) -> dict[int, array[int]]:
        """Where each relocation table's retargets are in ``retargets`` (and ``new_addends``), in their order.

        Positions, not Decision objects: a stress object's 20k of them would
        be made again, and held through the self-check's relocation checks.
        """
        tables = self.retargets.column("reloc_section")
        if len(self.new_addends) != len(tables):
            raise ValueError(f"{len(self.new_addends)} new addends for {len(tables)} retargets")
        order = sorted(range(len(tables)), key=tables.__getitem__)  # stable: in the order of retargets
        return {table: array("I", rows) for table, rows in groupby(order, key=tables.__getitem__)}

    def alias_index(self) -> dict[int, int]:
        """Replacement number -> the output symbol index of its alias (known once apply() has run)."""
        return {n: self.aliases[name].index for n, name in self.alias_for_replacement.items()}

    @property
    def changes(self) -> bool:
        return bool(self.retargets) or bool(self.addralign)


def _unique(name: str, taken: set[str], next_suffix: dict[str, int]) -> str:
    if name not in taken:
        return name
    # Suffixes below next_suffix[name] are taken already: many symbols sharing
    # one name must not make each search start again from ".1".
    n = next_suffix.get(name, 1)
    while f"{name}.{n}" in taken:
        n += 1
    next_suffix[name] = n + 1
    return f"{name}.{n}"


def plan(payload: Payload, funcs: FuncsTable, decisions: Decisions, policy: Policy) -> Plan:
    """Decide the symbol-level edits for the retarget decisions."""
    syms = payload.elf.symbols
    out = Plan(retargets=decisions.retargets)
    if policy.align_notes:
        from lp_rewrite.notes import alignment_edits

        out.addralign = alignment_edits(payload.elf)
    if not out.retargets:
        return out
    retargets = out.retargets
    reps = sorted({n for n in retargets.column("replacement") if n >= 0})  # -1: none (never for a retarget)
    undefined: dict[str, int] = {}
    # Symbol-table scans select their few rows with C loops (a stress object has 150k symbols).
    for i in compress(count(), map(C.SHN_UNDEF.__eq__, syms.shndx)):
        if i and syms.type(i) not in (C.STT_SECTION, C.STT_FILE):
            undefined.setdefault(syms.name(i), i)
    entry_points = {(funcs.replacements[n].section, funcs.replacements[n].offset) for n in reps}
    entry_sections = {sec for sec, _off in entry_points}
    at_entry: dict[tuple[int, int], list[int]] = {}
    values = syms.value
    shndx = syms.shndx
    for i in compress(count(), map(entry_sections.__contains__, shndx)):
        if (shndx[i], values[i]) in entry_points:
            at_entry.setdefault((shndx[i], values[i]), []).append(i)
    # A literal old_addr means a prelinked payload: its aliases hold addresses too.
    absolute = {funcs.replacements[n].original for n in reps if policy.absolute or funcs.replacements[n].old_literal}
    for n in reps:
        rep = funcs.replacements[n]
        name = rep.original
        out.alias_for_replacement[n] = name
        if name not in out.aliases:
            local = policy.local_aliases and "#" in name
            binding = C.STB_LOCAL if local else C.STB_GLOBAL
            if name in absolute:
                out.aliases[name] = Alias(name, None, binding, shndx=C.SHN_ABS)
            else:
                existing = rep.old_symbol if rep.old_symbol is not None else undefined.get(name)
                out.aliases[name] = Alias(name, existing, binding)
        alias = out.aliases[name]
        new_undefined_local = alias.existing is None and alias.shndx == C.SHN_UNDEF and alias.binding == C.STB_LOCAL
        if new_undefined_local and policy.linker_check:
            arch = payload.arch
            if not arch.ld_r_keeps_undefined_locals:
                raise UsageError(
                    f"--local-aliases: GNU ld -r on {arch.name} rejects undefined local symbols "
                    f"('undefined reference to `{name}'), so this object could not be linked; "
                    "rewrite the linked payload instead, without --local-aliases"
                )
        for i in at_entry.get((rep.section, rep.offset), []):
            if syms.type(i) in (C.STT_SECTION, C.STT_FILE):
                continue
            old = syms.name(i)
            if not old or old.startswith("$") or policy.is_renamed(old) or i in out.renames:
                continue  # unnamed, an Arm mapping symbol, or done by an earlier run
            out.renames[i] = old
    if out.renames:
        taken = _names_among(syms, {policy.renamed(old) for old in out.renames.values()}) | set(out.aliases)
        next_suffix: dict[str, int] = {}
        for i in sorted(out.renames):
            new = _unique(policy.renamed(out.renames[i]), taken, next_suffix)
            taken.add(new)
            out.renames[i] = new
    if absolute:
        _resolve_absolute(payload, funcs, reps, out, policy)
    _place_aliases(payload, out)
    entry = {n: funcs.replacements[n].offset for n in reps}
    out.new_addends = [
        addend + values[sym] - entry[n]
        for addend, sym, n in zip(
            retargets.column("addend"), retargets.column("symbol"), retargets.column("replacement"), strict=True
        )
    ]
    return out


def _names_among(syms: SymbolTable, stems: set[str]) -> set[str]:
    """The symbol names a new name made from ``stems`` may collide with (:func:`_unique`):
    a stem itself, or a stem, a dot and a suffix.

    Each name is looked at as bytes and let go at once: a set of every name
    (64k on stress30k) made and dropped megabytes of small strings, and
    their allocator pages stayed with the process.
    """
    table = syms.strtab.data
    find = table.find
    wanted = {encode_name(stem) for stem in stems}  # bytes compare as the names decoded do
    found: set[str] = set()
    for off in syms.name_off:
        raw = table[off : find(b"\0", off)]
        if raw in wanted or raw.rpartition(b".")[0] in wanted:
            found.add(decode_name(raw))
    return found


def _resolve_absolute(payload: Payload, funcs: FuncsTable, reps: list[int], out: Plan, policy: Policy) -> None:
    """Give every SHN_ABS alias its address; reuse an identical symbol already there."""
    from lp_rewrite.absolute import AbsoluteRequest, resolve_addresses

    requests = [
        AbsoluteRequest(r.original, r.old_literal, r.entry)
        for r in (funcs.replacements[n] for n in reps)
        if out.aliases[r.original].shndx == C.SHN_ABS
    ]
    addresses = resolve_addresses(requests, policy.xen_syms)
    syms = payload.elf.symbols
    present = {
        (syms.name(i), syms.value[i]): i
        for i, s in enumerate(syms.shndx)
        if i and s == C.SHN_ABS and syms.type(i) not in (C.STT_SECTION, C.STT_FILE)
    }
    for name, address in addresses.items():
        alias = out.aliases[name]
        alias.value = address
        alias.existing = present.get((name, address))  # e.g. prelink's value for an old_addr symbol


def _place_aliases(payload: Payload, out: Plan) -> None:
    """Where each injected alias goes in the symbol table."""
    syms = payload.elf.symbols
    files = [(i, syms.name(i)) for i in range(1, syms.first_global) if syms.type(i) == C.STT_FILE]
    groups: dict[int, list[NewSymbol]] = {}
    missing_file: dict[str, list[NewSymbol]] = {}
    global_func = C.st_info(C.STB_GLOBAL, C.STT_FUNC)
    for alias in out.aliases.values():
        if alias.existing is not None:
            continue
        if alias.binding == C.STB_GLOBAL:
            out.appended.append(NewSymbol(alias.name, global_func, alias.shndx, alias.value))
            continue
        new = NewSymbol(alias.name, C.st_info(C.STB_LOCAL, C.STT_FUNC), alias.shndx, alias.value)
        scope = alias.name.partition("#")[0]
        pos = None
        for k, (_idx, fname) in enumerate(files):
            if fname == scope:
                # End of that FILE symbol's group: prelink scopes by the nearest preceding FILE.
                pos = files[k + 1][0] if k + 1 < len(files) else syms.first_global
                break
        if pos is None:
            missing_file.setdefault(scope, []).append(new)
        else:
            groups.setdefault(pos, []).append(new)
    if missing_file:
        tail = groups.setdefault(syms.first_global, [])
        for scope, news in missing_file.items():
            tail.append(NewSymbol(scope, C.st_info(C.STB_LOCAL, C.STT_FILE), C.SHN_ABS))
            tail.extend(news)
    out.inserts = sorted(groups.items())


def _check_places_unshared(payload: Payload, retargets: DecisionList) -> None:
    """A retargeted place must belong to its relocation alone.

    Xen applies relocations in turn, so two that write overlapping bytes
    compound, and the result depends on their order (for REL, the second
    also reads the first one's result as its addend). Moving one of them then
    changes what the other produces. No compiler emits that; a damaged object
    is refused rather than rewritten into something unpredictable.
    """
    elf, types = payload.elf, payload.arch.types
    secs = elf.sections
    info = secs.info
    retargeted = retargets.column("section")
    wanted = set(retargeted)
    tables = [idx for idx in elf.relocation_sections if info[idx] in wanted]
    # Every place of a section, by offset (already sorted as compilers emit
    # them, so the sort is one linear pass). A retarget is then checked
    # against the few places within the widest field before its end.
    widths = {rtype: rt.width for rtype, rt in types.items()}  # an unknown type: taken as a word (4)
    widest = max([4, *widths.values()])
    per_section: dict[int, list[tuple[RelocationRun, slice]]] = {}
    for run in elf.relocation_runs(tables):
        for idx, rows in zip(run.sections, run.slices(), strict=True):
            per_section.setdefault(info[idx], []).append((run, rows))
    # Only a section where two places share a byte (none in a compiler's output)
    # is searched per retarget: found with C loops over views, no list per section.
    places: dict[int, tuple[list[int], list[int]]] = {}
    for section, parts in per_section.items():
        if len(parts) == 1:
            run, rows = parts[0]
            offsets: Sequence[int] = run.offsets[rows]
            kinds: Sequence[int] = run.types[rows]
            in_order = all(map(int.__le__, offsets, offsets[1:]))
        else:
            offsets = [o for run, rows in parts for o in run.offsets[rows]]
            kinds = [k for run, rows in parts for k in run.types[rows]]
            in_order = False
        if not in_order:
            pairs = sorted(zip(offsets, kinds, strict=True))
            offsets, kinds = [o for o, _k in pairs], [k for _o, k in pairs]
        ends = accumulate(map(add, offsets, map(widths.get, kinds, repeat(4))), max)  # furthest byte written so far
        if any(map(lt, offsets[1:], ends)):
            places[section] = (list(offsets), list(kinds))
    if not places:
        return
    for section, offset, rtype in zip(retargeted, retargets.column("offset"), retargets.column("rtype"), strict=True):
        if section not in places:
            continue
        offsets, kinds = places[section]
        end = offset + types[rtype].width
        lo, hi = bisect.bisect_left(offsets, offset - widest + 1), bisect.bisect_left(offsets, end)
        hits = [offsets[j] for j in range(lo, hi) if (w := widths.get(kinds[j], 4)) and offsets[j] + w > offset]
        if len(hits) > 1:  # its own place, and another one
            hits.remove(offset)
            name = secs.name(section)
            raise InputError(
                f"{name}+{offset:#x}: another relocation also writes these bytes ({name}+{hits[0]:#x}), "
                "so Xen's result depends on their order and this one cannot be moved alone"
            )


def apply(payload: Payload, funcs: FuncsTable, out: Plan) -> bytes:
    """The rewritten object's bytes (the input's bytes when nothing changes).

    Records the input -> output symbol index map on the plan (``symbol_map``)
    and each alias's output index (``Alias.index``), for the self-check.
    """
    return edit(payload, funcs, out).to_bytes()


def apply_chunks(payload: Payload, funcs: FuncsTable, out: Plan) -> Pieces:
    """The rewritten object as consecutive pieces (what :func:`apply` joins), to be written in turn."""
    return edit(payload, funcs, out).to_chunks()


def edit(payload: Payload, funcs: FuncsTable, out: Plan) -> ElfEditor:
    """The editor holding the plan's edits of the payload (recording the index maps on the plan)."""
    elf = payload.elf
    editor = ElfEditor(elf)
    for index, value in out.addralign.items():  # --align-notes
        editor.set_section_field(index, "sh_addralign", value)
    out.symbol_map = editor.symbol_map
    if not out.retargets:
        return editor  # at most section headers change
    if out.inserts and C.SHT_LLVM_ADDRSIG in elf.sections.type:
        s = elf.sections[elf.sections.type.index(C.SHT_LLVM_ADDRSIG)]
        raise UsageError(
            f"section {s.name!r} holds symbol indices this tool cannot renumber; "
            "local aliases are not possible for this object"
        )
    _edit_symbols(editor, out)
    _edit_relocations(editor, payload, out)
    _check_places_unshared(payload, out.retargets)
    flags = elf.sections.flags  # a column: a Section object for each of 50k edited tables would stay cached
    for idx in editor.edited_tables:  # the tables the rewrite edits, not the loaded code and data
        if flags[idx] & C.SHF_ALLOC:
            raise InputError(
                f"section [{idx}] {elf.sections[idx].name!r} is SHF_ALLOC: Xen would load this table, "
                "and the rewrite must change it"
            )
    return editor


def _edit_symbols(editor: ElfEditor, out: Plan) -> None:
    """Renamed in place, locals inserted (every reference renumbered), globals appended; each alias's index."""
    for i, new in out.renames.items():
        editor.rename_symbol(i, new)
    try:
        symbol_map = out.symbol_map = editor.insert_symbols(out.inserts, out.appended)
    except InputError as exc:
        # Sections Xen does not relocate were not checked on reading; each must hold
        # whole entries naming symbols of the table before its entries are renumbered.
        raise InputError(f"--local-aliases renumbers every relocation section, and {exc}") from None
    by_name: dict[str, int] = {}
    for (_pos, news), start in zip(out.inserts, symbol_map.block_starts, strict=True):
        for j, new_sym in enumerate(news):
            if new_sym.info & 0xF == C.STT_FUNC:  # not the FILE symbol opening a group
                by_name[new_sym.name] = start + j
    for j, new_sym in enumerate(out.appended):
        by_name[new_sym.name] = symbol_map.appended_start + j
    for alias in out.aliases.values():
        alias.index = symbol_map(alias.existing) if alias.existing is not None else by_name[alias.name]


def _edit_relocations(editor: ElfEditor, payload: Payload, out: Plan) -> None:
    """Each retarget names its alias with its new addend (RELA: the field; REL: the place, re-encoded)."""
    by_table = out.by_table()
    alias_index = out.alias_index()
    ret, new_addends = out.retargets, out.new_addends
    index, replacement = ret.column("index"), ret.column("replacement")
    for ridx in sorted(by_table):
        rows = by_table[ridx]
        entries = [index[k] for k in rows]
        editor.set_relocation_symbols(ridx, entries, [alias_index[replacement[k]] for k in rows])
        if payload.elf.sections.type[ridx] == C.SHT_RELA:
            editor.set_relocation_addends(ridx, entries, [new_addends[k] for k in rows])
            continue
        for k in rows:
            d = ret[k]
            if new_addends[k] != d.addend:
                payload.arch.write_implicit_addend(d.rtype, editor.contents(d.section), d.offset, new_addends[k])
