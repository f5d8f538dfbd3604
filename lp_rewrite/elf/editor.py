"""Edit a relocatable object by index: symbols, relocations, section headers.

An :class:`ElfEditor` collects edits against a parsed :class:`ElfFile` and
writes the result once, as pieces (:func:`lp_rewrite.elf.writer.chunks`). It
knows the ELF format and nothing of what the edits are for:

* symbols: rename one, insert local symbols before given input indices and
  append others. Inserting renumbers every symbol reference the format has
  (relocation entries, ``SHT_GROUP`` signatures, ``.symtab_shndx``, the
  symbol table's first-global ``sh_info``) and returns an :class:`IndexMap`
  from input to output symbol index;
* relocations: set the symbol or the explicit addend of some entries of a
  section (the entry's type is kept). A table not copied otherwise (by a
  renumbering) keeps them as rows, and is made when the output is written;
* section headers: ``sh_info``, ``sh_addralign``, ``sh_entsize``;
* contents: a mutable copy of any section's bytes (e.g. a REL place whose
  implicit addend is re-encoded by the target's own rule).

Tables are edited in bulk: a column of a relocation section is renumbered
through a lookup array in C (``map`` over a strided ``memoryview``), never
with a Python object or call per entry.
"""

from __future__ import annotations

import bisect
import operator
import struct
from array import array
from collections.abc import Sequence
from functools import cached_property
from itertools import compress, repeat
from typing import Final, Literal

from lp_rewrite.elf import consts as C
from lp_rewrite.elf.file import ElfFile, encode_name
from lp_rewrite.elf.layout import _NATIVE_LE
from lp_rewrite.elf.writer import Made, Pieces, chunks
from lp_rewrite.errors import InputError
from lp_rewrite.record import Record


class NewSymbol(Record):
    """A symbol to add: its name, st_info, st_shndx (written as given) and st_value."""

    __slots__ = ("info", "name", "shndx", "value")

    def __init__(self, name: str, info: int, shndx: int, value: int = 0) -> None:
        self.name = name
        self.info = info
        self.shndx = shndx
        self.value = value


class IndexMap:
    """Input symbol index -> output symbol index, after insertions.

    ``blocks`` are ``(position, count)`` pairs in increasing position: ``count``
    symbols were inserted just before input index ``position`` (``position``
    may be the input's symbol count: at its end). ``appended`` symbols follow
    all of them and move no input index.
    """

    def __init__(self, count: int, blocks: Sequence[tuple[int, int]] = (), appended: int = 0) -> None:
        positions = [p for p, _n in blocks]
        if positions != sorted(set(positions)) or any(not 0 <= p <= count for p in positions):
            raise ValueError(f"insertion positions {positions} are not increasing indices of {count} symbols")
        self.count = count
        self.appended = appended
        self._positions = positions
        self._shift: list[int] = []  # symbols inserted before each block's position, that block included
        total = 0
        starts = []
        for p, n in blocks:
            starts.append(p + total)
            total += n
            self._shift.append(total)
        self.inserted = total
        # Output index of the first symbol of each inserted block, and of the appended ones.
        self.block_starts: tuple[int, ...] = tuple(starts)
        self.appended_start = count + total

    @property
    def new_count(self) -> int:
        return self.count + self.inserted + self.appended

    @property
    def moves(self) -> bool:
        """Whether any input index changes (appending moves none)."""
        return self.inserted > 0

    def __call__(self, index: int) -> int:
        """The output index of input ``index`` (any integer: beyond the table, it moves with the last)."""
        k = bisect.bisect_right(self._positions, index)
        return index + (self._shift[k - 1] if k else 0)

    @cached_property
    def table(self) -> array[int]:
        """``table[i]`` is the output index of input symbol ``i``, for every input symbol."""
        out = array("I")
        lo = 0
        shift = 0
        for p, after in zip(self._positions, self._shift, strict=True):
            out.extend(range(lo + shift, p + shift))
            lo, shift = p, after
        out.extend(range(lo + shift, self.count + shift))
        return out

    def remap(self, indices: Sequence[int], typecode: str = "I") -> array[int]:
        """Every index of a column of input symbol indices (each below ``count``), mapped; C speed."""
        if not self.moves:
            return array(typecode, indices)
        return array(typecode, map(self.table.__getitem__, indices))


SectionField = Literal["sh_info", "sh_addralign", "sh_entsize"]

# What a row of ElfEditor's set entries sets.
_SYMBOL, _ADDEND = 0, 1
# The values a relocation field of each struct format holds.
_FIELD_RANGE: Final = {"i": (-(1 << 31), (1 << 31) - 1), "q": (-(1 << 63), (1 << 63) - 1)}

_FIELDS: Final = ("sh_info", "sh_addralign", "sh_entsize")


class ElfEditor:
    """Edits of one :class:`ElfFile`, written by :meth:`to_bytes`.

    Indices are those of the object being written: before
    :meth:`insert_symbols`, the input's; after it, the output's (section
    indices never change).
    """

    def __init__(self, elf: ElfFile) -> None:
        self.elf = elf
        self.layout = elf.layout
        # Replaced tables in the order they were first edited, and replaced
        # contents (contents() copies): the latter are written over the former.
        self._tables: dict[int, bytes | bytearray] = {}
        # Relocation entries set in tables not copied (yet): one row per field
        # set, in table order, made into the table's bytes when it is written
        # (_edited_copy). A stress object edits 8.7k small tables: copied, they
        # and their objects stayed in the allocator's pages through the self-check.
        self._set_table = array("I")
        self._set_entry = array("Q")
        self._set_value = array("q")
        self._set_field = array("B")  # _SYMBOL or _ADDEND
        lay = self.layout
        sym_bits = 32 if lay.rel_sym is not None else 32 - lay.r_sym_shift  # ELF32: r_sym is 24 bits of r_info
        self._ranges = {_SYMBOL: (0, (1 << sym_bits) - 1), _ADDEND: _FIELD_RANGE[lay.rela_addend[0]]}
        self._contents: dict[int, bytearray] = {}
        self._headers: dict[str, dict[int, int]] = {f: {} for f in _FIELDS}
        self._strtab: bytearray | None = None
        self._names: dict[str, int] = {}
        self.symbol_map = IndexMap(elf.symbols.count)
        self._inserted = False
        self._info_field = struct.Struct("<" + lay.rel_info[0])
        self._sym_field = struct.Struct("<" + (lay.rel_sym or lay.rel_info)[0])
        self._addend_field = struct.Struct("<" + lay.rela_addend[0])

    # -- what was edited ------------------------------------------------------

    @property
    def edited_tables(self) -> list[int]:
        """Sections whose contents the symbol and relocation edits replace: those copied in the
        order first edited, then those whose entries are set when written, in index order."""
        return list(self._tables) + [i for i in self._later() if i not in self._tables]

    def _later(self) -> list[int]:
        """The tables with entries set by row (each once, in index order)."""
        return sorted(set(self._set_table))

    # -- section headers and contents ------------------------------------------

    def set_section_field(self, index: int, field: SectionField, value: int) -> None:
        """Set one header field of a section (its file offset follows a new sh_addralign)."""
        self._headers[field][index] = value

    def contents(self, index: int) -> bytearray:
        """A mutable copy of a section's input bytes, written in its place."""
        buf = self._contents.get(index)
        if buf is None:
            buf = self._contents[index] = bytearray(self.elf.section_data(index))
        return buf

    # -- symbols ----------------------------------------------------------------

    def _symbol_tables(self) -> tuple[bytearray, bytearray]:
        """The symbol table and its string table, as edited so far (registered on first use)."""
        elf = self.elf
        syms = elf.symbols
        if self._strtab is None:
            self._tables[elf.symtab_index] = bytearray(elf.section_data(elf.symtab_index))
            self._strtab = bytearray(syms.strtab.data)
            self._tables[syms.strtab_index] = self._strtab
            if syms.shndx_section is not None:  # grows with the symbol table
                self._tables[syms.shndx_section] = bytearray(elf.section_data(syms.shndx_section))
        symtab = self._tables[elf.symtab_index]
        assert isinstance(symtab, bytearray)
        return symtab, self._strtab

    def add_name(self, name: str) -> int:
        """The offset of ``name`` in the symbol string table, appended on its first use."""
        _symtab, strtab = self._symbol_tables()
        off = self._names.get(name)
        if off is None:
            off = len(strtab)
            strtab.extend(encode_name(name) + b"\0")
            self._names[name] = off
        return off

    def rename_symbol(self, index: int, name: str) -> None:
        off = self.add_name(name)
        symtab, _strtab = self._symbol_tables()
        fmt, at = self.layout.sym_name
        struct.pack_into("<" + fmt, symtab, index * self.layout.sym.size + at, off)

    def _pack(self, sym: NewSymbol) -> bytes:
        return self.layout.pack_sym(self.add_name(sym.name), sym.info, C.STV_DEFAULT, sym.shndx, sym.value, 0)

    def insert_symbols(
        self, inserts: Sequence[tuple[int, Sequence[NewSymbol]]], appended: Sequence[NewSymbol] = ()
    ) -> IndexMap:
        """Insert local symbols and append others; renumber every reference; the index map.

        ``inserts``: ``(position, symbols)`` in increasing input position, each
        at most the first-global index (the inserted symbols are locals).
        ``appended`` go after the last symbol. Names are added to the string
        table in that order. Called once, with the input's indices. When
        local symbols are inserted, every relocation table naming the symbol
        table must hold whole entries naming its symbols (InputError otherwise,
        before anything is renumbered).
        """
        elf = self.elf
        syms = elf.symbols
        if self._inserted:
            raise ValueError("symbols are inserted once")
        self._inserted = True
        imap = IndexMap(syms.count, [(p, len(news)) for p, news in inserts], len(appended))
        if inserts and inserts[-1][0] > syms.first_global:
            raise ValueError(f"local symbols inserted at {inserts[-1][0]}, past the first global {syms.first_global}")
        secs = elf.sections
        tables: list[int] = []  # the relocation tables, renumbered when symbols move
        if imap.moves:
            unknown = [i for i, t in enumerate(secs.type) if t == C.SHT_LLVM_ADDRSIG]
            if unknown:
                name = secs.name(unknown[0])
                raise InputError(f"section [{unknown[0]}] {name!r} holds symbol indices this editor does not renumber")
            tables = elf.relocation_tables
            elf.check_relocations(tables)
        self._splice_symbols(inserts, appended, imap)
        self.symbol_map = imap
        if imap.moves:
            self._renumber_references(imap, tables)
        return imap

    def _splice_symbols(
        self, inserts: Sequence[tuple[int, Sequence[NewSymbol]]], appended: Sequence[NewSymbol], imap: IndexMap
    ) -> None:
        """The symbol table and .symtab_shndx with the new entries in place (new symbols need no extended index)."""
        elf = self.elf
        symtab, _strtab = self._symbol_tables()
        size = self.layout.sym.size
        pieces: list[bytes | bytearray] = []
        prev = 0
        for pos, news in inserts:
            pieces.append(symtab[prev * size : pos * size])
            pieces.extend(self._pack(s) for s in news)
            prev = pos
        pieces.append(symtab[prev * size :])
        pieces.extend(self._pack(s) for s in appended)
        new_symtab = bytearray().join(pieces)
        assert len(new_symtab) == imap.new_count * size
        self._tables[elf.symtab_index] = new_symtab
        shndx = elf.symbols.shndx_section
        if shndx is not None:
            ext = self._tables[shndx]
            parts: list[bytes | bytearray] = []
            prev = 0
            for pos, news in inserts:  # the same positions as in the symbol table
                parts.append(ext[prev * 4 : pos * 4])
                parts.append(bytes(4 * len(news)))
                prev = pos
            parts.append(ext[prev * 4 :])
            parts.append(bytes(4 * len(appended)))
            self._tables[shndx] = bytearray().join(parts)

    def _renumber_references(self, imap: IndexMap, tables: list[int]) -> None:
        """Every symbol index the object holds outside the symbol table (``tables``: its relocation tables)."""
        elf = self.elf
        secs = elf.sections
        self.set_section_field(elf.symtab_index, "sh_info", elf.symbols.first_global + imap.inserted)
        for i in tables:
            self._renumber(i, imap)
        for i, t in enumerate(secs.type):
            if t == C.SHT_GROUP and secs.link[i] == elf.symtab_index:  # its signature symbol
                self.set_section_field(i, "sh_info", imap(secs.info[i]))

    # -- relocations ------------------------------------------------------------

    def _relocation_data(self, index: int) -> bytearray:
        """The table's copy, edited in place from here on (with the entries set by row so far)."""
        buf = self._tables.get(index)
        if buf is None:
            buf = self._tables[index] = self._edited_copy(index)
        assert isinstance(buf, bytearray)
        return buf

    def _edited_copy(self, index: int) -> bytearray:
        """A copy of relocation table ``index`` with the entries set by row.

        Made once per output the editor gives (Pieces keeps it for the read-back),
        for each of a stress object's 8.7k tables. A symbol and an addend are
        different bytes of an entry: each field's rows are packed in their
        order, the last one set for an entry written last, as into a copy.
        """
        buf = bytearray(self.elf.section_data(index))
        tables = self._set_table
        lo = bisect.bisect_left(tables, index)
        hi = bisect.bisect_right(tables, index, lo)
        if lo == hi:
            return buf
        entries, values = self._set_entry[lo:hi], self._set_value[lo:hi]
        is_symbol = [field == _SYMBOL for field in self._set_field[lo:hi]]
        self._put_symbols(buf, index, list(compress(entries, is_symbol)), list(compress(values, is_symbol)))
        is_addend = [not symbol for symbol in is_symbol]
        self._put_addends(buf, list(compress(entries, is_addend)), list(compress(values, is_addend)))
        return buf

    def _set_by_row(self, index: int, field: int, entries: Sequence[int], values: Sequence[int]) -> bool:
        """Record entries of a table not copied; False when it must be edited in a copy instead
        (it is copied already, or rows of a later table were recorded: rows stay in table order)."""
        tables = self._set_table
        if index in self._tables or (tables and tables[-1] > index):
            return False
        n = len(entries)
        if n != len(values):
            raise ValueError(f"{n} entries for {len(values)} values")
        if not n:
            return True
        # What packing into a copy would refuse now is left to it (the same error, at the same
        # time): an entry outside the table, a value outside its field.
        secs = self.elf.sections
        low, high = self._ranges[field]
        if (
            min(entries) < 0
            or max(entries) * self.layout.reloc_entsize(secs.type[index]) >= secs.size[index]
            or min(values) < low
            or max(values) > high
        ):
            return False
        tables.extend(repeat(index, n))
        self._set_entry.extend(entries)
        self._set_value.extend(values)
        self._set_field.extend(repeat(field, n))
        return True

    def _renumber(self, index: int, imap: IndexMap) -> None:
        """Every entry's symbol through the index map: one C-level pass over a strided view."""
        buf = self._relocation_data(index)
        lay = self.layout
        entsize = lay.reloc_entsize(self.elf.sections.type[index])
        if not buf:
            return
        table = imap.table.__getitem__
        if _NATIVE_LE and lay.rel_sym is not None:  # ELF64: r_sym is the high word of r_info
            words = memoryview(buf).cast("I")
            col = words[lay.rel_sym[1] // 4 :: entsize // 4]
            col[:] = array("I", map(table, col))
            return
        fmt, at = lay.rel_info
        if _NATIVE_LE and fmt == "I":  # ELF32: r_info = sym << 8 | type
            words = memoryview(buf).cast("I")
            col = words[at // 4 :: entsize // 4]
            shift, mask = lay.r_sym_shift, lay.r_type_mask
            moved = map(operator.lshift, map(table, map(operator.rshift, col, repeat(shift))), repeat(shift))
            col[:] = array("I", map(operator.or_, moved, map(operator.and_, col, repeat(mask))))
            return
        info = struct.Struct("<" + fmt)
        for pos in range(at, len(buf), entsize):
            value = info.unpack_from(buf, pos)[0]
            info.pack_into(buf, pos, lay.r_info(imap(lay.r_sym(value)), lay.r_type(value)))

    def set_relocation_symbols(self, index: int, entries: Sequence[int], symbols: Sequence[int]) -> None:
        """Entry ``entries[k]`` of relocation section ``index`` now names symbol ``symbols[k]``; types kept."""
        if not self._set_by_row(index, _SYMBOL, entries, symbols):
            self._put_symbols(self._relocation_data(index), index, entries, symbols)

    def _put_symbols(self, buf: bytearray, index: int, entries: Sequence[int], symbols: Sequence[int]) -> None:
        lay = self.layout
        entsize = lay.reloc_entsize(self.elf.sections.type[index])
        if lay.rel_sym is not None:  # ELF64: r_sym is the high word of r_info, the type the low one
            pack, at = self._sym_field.pack_into, lay.rel_sym[1]
            for entry, sym in zip(entries, symbols, strict=True):
                pack(buf, entry * entsize + at, sym)
            return
        info, at = self._info_field, lay.rel_info[1]
        r_info, r_type = lay.r_info, lay.r_type
        for entry, sym in zip(entries, symbols, strict=True):
            pos = entry * entsize + at
            info.pack_into(buf, pos, r_info(sym, r_type(info.unpack_from(buf, pos)[0])))

    def set_relocation_addends(self, index: int, entries: Sequence[int], addends: Sequence[int]) -> None:
        """The explicit addend of entries of an SHT_RELA section."""
        if self.elf.sections.type[index] != C.SHT_RELA:
            raise ValueError(f"section [{index}] is not SHT_RELA: its addends are in the places")
        if not self._set_by_row(index, _ADDEND, entries, addends):
            self._put_addends(self._relocation_data(index), entries, addends)

    def _put_addends(self, buf: bytearray, entries: Sequence[int], addends: Sequence[int]) -> None:
        pack, at, entsize = self._addend_field.pack_into, self.layout.rela_addend[1], self.layout.rela.size
        for entry, addend in zip(entries, addends, strict=True):
            pack(buf, entry * entsize + at, addend)

    # -- output -----------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The edited object (the input's bytes when nothing was edited)."""
        if not self._tables and not self._set_table and not self._contents and not any(self._headers.values()):
            return bytes(self.elf.data)  # the input itself when it is bytes (bytes() of bytes is the object)
        return b"".join(self.to_chunks())

    def to_chunks(self) -> Pieces:
        """The edited object as consecutive pieces, most of them views of the input (:func:`writer.chunks`)."""
        data: dict[int, bytes | bytearray] = dict(self._tables)
        data.update(self._contents)
        later = bytearray(len(self.elf.sections))  # the tables made as they are written
        for i in self._later():
            if i not in data:
                later[i] = 1
        h = self._headers
        made = Made(bytes(later), self._edited_copy) if any(later) else None
        return chunks(self.elf, data, h["sh_info"], h["sh_entsize"], h["sh_addralign"], made)
