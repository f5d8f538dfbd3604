"""A validating reader for little-endian ELF relocatable objects.

Every offset, size and index taken from the file is checked before use, and
every failure is an :class:`InputError` whose message names the offending
section, symbol or field. Work is bounded by the file size: tables are read
as columns over the raw bytes (see :mod:`lp_rewrite.elf.layout`), never
followed through links more than once.
"""

from __future__ import annotations

import mmap
from array import array
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from functools import cached_property
from itertools import compress, count, islice
from operator import add, gt, lt, mod, mul, not_
from typing import overload

from lp_rewrite.elf import consts as C
from lp_rewrite.elf.layout import _NATIVE_LE, ITEM_SIZE, ClassLayout, column, layout_for
from lp_rewrite.elf.runs import RelocationRun, RunIndex
from lp_rewrite.errors import InputError
from lp_rewrite.record import Record


class Section(Record):
    """One section header, plus its resolved name."""

    __slots__ = (
        "index",
        "name",
        "sh_addr",
        "sh_addralign",
        "sh_entsize",
        "sh_flags",
        "sh_info",
        "sh_link",
        "sh_name",
        "sh_offset",
        "sh_size",
        "sh_type",
    )

    def __init__(
        self,
        index: int,
        name: str,
        sh_name: int,
        sh_type: int,
        sh_flags: int,
        sh_addr: int,
        sh_offset: int,
        sh_size: int,
        sh_link: int,
        sh_info: int,
        sh_addralign: int,
        sh_entsize: int,
    ) -> None:
        self.index = index
        self.name = name
        self.sh_name = sh_name
        self.sh_type = sh_type
        self.sh_flags = sh_flags
        self.sh_addr = sh_addr
        self.sh_offset = sh_offset
        self.sh_size = sh_size
        self.sh_link = sh_link
        self.sh_info = sh_info
        self.sh_addralign = sh_addralign
        self.sh_entsize = sh_entsize

    @property
    def alloc(self) -> bool:
        return bool(self.sh_flags & C.SHF_ALLOC)

    @property
    def executable(self) -> bool:
        return bool(self.sh_flags & C.SHF_EXECINSTR)

    @property
    def has_file_data(self) -> bool:
        return self.sh_type not in (C.SHT_NOBITS, C.SHT_NULL)


def decode_name(raw: bytes) -> str:
    # Symbol names are bytes; surrogateescape round-trips any of them.
    return raw.decode("utf-8", "surrogateescape")


def encode_name(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


class SectionCountError(InputError):
    """The object has more sections than the reader was told to accept.

    Raised before any section header is read; the caller that set the limit
    words the refusal (it knows why the limit exists and how to lift it).
    """

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"the object has {count} sections; fewer than {limit} are accepted")
        self.count = count
        self.limit = limit


class UnsupportedObject(InputError):
    """An ELF file this reader does not take, with the reason as data.

    ``reason`` is one of "byte order", "type", "linked section", "symbol
    tables"; ``detail`` is the fact found (empty for the byte order). The
    caller may word the refusal for its own users.
    """

    def __init__(self, reason: str, detail: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.detail = detail


class StringTable:
    """A NUL-terminated string table, its names at most ``max_name_len`` bytes (None: any length)."""

    def __init__(self, data: bytes, what: str, max_name_len: int | None = None) -> None:
        if not data or data[0] != 0 or data[-1] != 0:
            raise InputError(f"{what}: string table must start and end with a NUL byte")
        self.data = data
        self.what = what
        self.max_name_len = max_name_len

    def get(self, offset: int) -> str:
        # The table ends with NUL, so any in-range offset finds one; the bound
        # keeps the scan (and the decoded name) short whatever the table holds.
        limit = self.max_name_len
        if limit is None:
            return decode_name(self.data[offset : self.data.find(b"\0", offset)])
        end = self.data.find(b"\0", offset, offset + limit + 1)
        if end < 0:
            raise InputError(f"{self.what}: the name at offset {offset} is longer than {limit} bytes")
        return decode_name(self.data[offset:end])


class IndexMask(AbstractSet[int]):
    """A set of indices below ``size`` held as a byte per index.

    A stress object's 85k extended-index symbols cost 100 KB this way, where
    a frozenset of them costs 6 MB.
    """

    def __init__(self, size: int, flags: Iterable[bool]) -> None:
        self._bits = bytes(flags)
        if len(self._bits) != size:
            raise ValueError(f"{len(self._bits)} flags for {size} indices")
        self._count = self._bits.count(1)

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and 0 <= index < len(self._bits) and self._bits[index] == 1

    def __iter__(self) -> Iterator[int]:
        return compress(count(), self._bits)

    def __len__(self) -> int:
        return self._count


class SectionTable(Sequence[Section]):
    """The section header table, as columns; Section objects on demand.

    A stress object has 100k sections and a payload touches a handful, so
    per-section objects are only made for the sections a caller asks for.
    """

    def __init__(self, headers: memoryview, layout: ClassLayout, names: StringTable) -> None:
        n = len(headers) // layout.shdr.size
        cols = [column(headers, f, layout.shdr.size) for f in layout.shdr_fields]
        (
            self.name_off,
            self.type,
            self.flags,
            self.addr,
            self.offset,
            self.size,
            self.link,
            self.info,
            self.addralign,
            self.entsize,
        ) = cols
        self.total = n
        self.names = names
        self._cache: dict[int, Section] = {}

    def __len__(self) -> int:
        return self.total

    @overload
    def __getitem__(self, index: int) -> Section: ...
    @overload
    def __getitem__(self, index: slice) -> list[Section]: ...
    def __getitem__(self, index: int | slice) -> Section | list[Section]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.total))]
        sec = self._cache.get(index)
        if sec is None:
            if not -self.total <= index < self.total:
                raise IndexError(index)
            index %= self.total
            sec = Section(
                index,
                self.name(index),
                self.name_off[index],
                self.type[index],
                self.flags[index],
                self.addr[index],
                self.offset[index],
                self.size[index],
                self.link[index],
                self.info[index],
                self.addralign[index],
                self.entsize[index],
            )
            self._cache[index] = sec
        return sec

    def __iter__(self) -> Iterator[Section]:
        return (self[i] for i in range(self.total))

    def forget(self) -> None:
        """Let the Section objects made so far go (the next access makes them again)."""
        self._cache.clear()

    def name(self, index: int) -> str:
        return self.names.get(self.name_off[index]) if index else ""

    def has_file_data(self, index: int) -> bool:
        return bool(self.data_mask[index])

    @cached_property
    def tables(self) -> array[int]:
        """Index of every SHT_REL/SHT_RELA section past header 0, in index order."""
        kinds = (C.SHT_REL, C.SHT_RELA)
        return array("I", compress(range(1, self.total), map(kinds.__contains__, self.type[1:])))

    @cached_property
    def file_order(self) -> array[int]:
        """Every section past header 0, by file offset (ties in index order).

        Sorted once (for the writer) and kept as 4 bytes a section for every
        later walk in file order (the self-check's).
        """
        n = self.total
        if not any(map(gt, islice(self.offset, 1, None), islice(self.offset, 2, None))):
            return array("I", range(1, n))  # already in file order
        return array("I", sorted(range(1, n), key=self.offset.__getitem__))  # stable: ties in index order

    @cached_property
    def data_mask(self) -> bytes:
        """A byte per section: 1 for one with contents in the file (never header 0), else 0."""
        no_data = (C.SHT_NOBITS, C.SHT_NULL)
        mask = bytearray(map(not_, map(no_data.__contains__, self.type)))
        mask[0] = 0
        return bytes(mask)

    def _name_offsets(self, name: str) -> set[int]:
        """Every offset of the section name table where ``name`` and its NUL start.

        Any match counts: linkers share suffixes, so sh_name may point into a
        longer name (".rela.text.foo" also holds ".text.foo").
        """
        want = encode_name(name) + b"\0"
        table = self.names.data
        offsets = set()
        pos = table.find(want)
        while pos >= 0:
            offsets.add(pos)
            pos = table.find(want, pos + 1)
        return offsets

    def find(self, name: str) -> int | None:
        """Index of the first section with this name (no per-section decoding)."""
        best: int | None = None
        for off in self._name_offsets(name):
            try:
                i = self.name_off.index(off, 1)
            except ValueError:
                continue
            if best is None or i < best:
                best = i
        return best

    def find_all(self, names: Iterable[str]) -> list[int]:
        """Every section (index order) whose name is one of ``names`` (no per-section decoding)."""
        offsets = set().union(*map(self._name_offsets, names))
        if not offsets:
            return []
        return [i for i, off in enumerate(self.name_off) if i and off in offsets]


class SymbolTable:
    """The object's symbol table, as columns indexed by symbol number."""

    def __init__(self, elf: ElfFile, section: Section) -> None:
        lay = elf.layout
        self.section = section
        where = f"symbol table [{section.index}] {section.name!r}"
        if section.sh_entsize != lay.sym.size:
            raise InputError(f"{where}: sh_entsize {section.sh_entsize} (expected {lay.sym.size})")
        if section.sh_size == 0 or section.sh_size % lay.sym.size:
            raise InputError(f"{where}: size {section.sh_size} is not a non-zero multiple of {lay.sym.size}")
        if not 0 < section.sh_link < len(elf.sections):
            raise InputError(f"{where}: sh_link {section.sh_link} is not a section index")
        strsec = elf.sections[section.sh_link]
        if strsec.sh_type != C.SHT_STRTAB:
            raise InputError(f"{where}: linked section [{strsec.index}] is not a string table")
        self.strtab_index = strsec.index
        self.strtab = StringTable(
            bytes(elf.section_data(strsec.index)), f"string table [{strsec.index}] {strsec.name!r}", elf.max_name_len
        )
        data = elf.section_data(section.index)
        self.count = section.sh_size // lay.sym.size
        self.name_off = column(data, lay.sym_name, lay.sym.size)
        self.info = column(data, lay.sym_info, lay.sym.size)
        self.other = column(data, lay.sym_other, lay.sym.size)
        self.value = column(data, lay.sym_value, lay.sym.size)
        self.size = column(data, lay.sym_size, lay.sym.size)
        shndx = column(data, lay.sym_shndx, lay.sym.size)
        if max(self.name_off) >= len(self.strtab.data):
            bad = next(i for i, n in enumerate(self.name_off) if n >= len(self.strtab.data))
            raise InputError(f"symbol [{bad}]: name offset {self.name_off[bad]} is outside the string table")
        # Names are decoded lazily, each at most max_name_len bytes. If the table
        # holds a longer string at all (one C-speed split), find the symbol now,
        # while the error can name it.
        limit = elf.max_name_len
        if limit is not None and max(map(len, self.strtab.data.split(b"\0"))) > limit:
            table = self.strtab.data
            for i, off in enumerate(self.name_off):
                if table.find(b"\0", off, off + limit + 1) < 0:
                    raise InputError(f"symbol [{i}]: its name (string table offset {off}) is longer than {limit} bytes")
        # .symtab_shndx, when present, must grow with the symbol table even if
        # no symbol needs it, so find it whatever the symbols say.
        self.shndx_section = self._find_shndx_section(elf)
        # Symbols whose real section index came through SHN_XINDEX: their index
        # may be >= SHN_LORESERVE and still be a section, not a special value.
        self.extended: AbstractSet[int] = frozenset()
        if C.SHN_XINDEX in shndx:
            shndx = self._resolve_xindex(elf, shndx)
        nsec = len(elf.sections)
        for value in set(shndx):  # distinct values only: C-speed on big tables
            if nsec <= value < C.SHN_LORESERVE:
                i = shndx.index(value)
                raise InputError(
                    f"symbol [{i}]: section index {value} is out of range (the object has {nsec} sections)"
                )
        for i in self.extended:
            if not 0 < shndx[i] < nsec:
                raise InputError(f"symbol [{i}]: extended section index {shndx[i]} is out of range ({nsec} sections)")
        self.shndx = shndx
        # sh_info: one greater than the index of the last local symbol.
        self.first_global = section.sh_info
        if not 0 < self.first_global <= self.count:
            raise InputError(f"{where}: sh_info {self.first_global} is not a valid first-global index")
        self._names: dict[int, str] = {}
        # Columns and the name table are copies: a mapped file's pages of them can go.
        for k in (section.index, strsec.index, self.shndx_section):
            if k is not None:
                elf.release(elf.sections.offset[k], elf.sections.offset[k] + elf.sections.size[k])

    def _find_shndx_section(self, elf: ElfFile) -> int | None:
        secs = elf.sections
        for i in compress(count(), map(C.SHT_SYMTAB_SHNDX.__eq__, secs.type)):
            if secs.link[i] == self.section.index:
                sec = secs[i]
                if sec.sh_size != 4 * self.count:
                    raise InputError(f"section [{sec.index}] {sec.name!r}: size does not match the symbol table")
                return sec.index
        return None

    def _resolve_xindex(self, elf: ElfFile, shndx: array[int]) -> array[int]:
        if self.shndx_section is None:
            first = shndx.index(C.SHN_XINDEX)
            raise InputError(f"symbol [{first}] uses SHN_XINDEX but the object has no SHT_SYMTAB_SHNDX section")
        ext = column(elf.section_data(self.shndx_section), ("I", 0), 4)
        self.extended = extended = IndexMask(len(shndx), map(C.SHN_XINDEX.__eq__, shndx))
        wide = array("I", shndx)  # an extended index may not fit st_shndx's 16 bits
        for i in extended:
            wide[i] = ext[i]
        return wide

    def name(self, index: int) -> str:
        n = self._names.get(index)
        if n is None:
            n = self.strtab.get(self.name_off[index])
            self._names[index] = n
        return n

    def bind(self, index: int) -> int:
        return self.info[index] >> 4

    def type(self, index: int) -> int:
        return self.info[index] & 0xF

    def is_defined_in_section(self, index: int) -> bool:
        s = self.shndx[index]
        return C.SHN_UNDEF < s < C.SHN_LORESERVE or index in self.extended

    def defined_in_a_section(self, indices: Iterable[int]) -> list[int]:
        """Those of ``indices`` that :meth:`is_defined_in_section` (one loop, no call per symbol)."""
        shndx, extended, undef, reserved = self.shndx, self.extended, C.SHN_UNDEF, C.SHN_LORESERVE
        return [i for i in indices if undef < shndx[i] < reserved or i in extended]

    def is_undefined(self, index: int) -> bool:
        return self.shndx[index] == C.SHN_UNDEF

    def is_absolute(self, index: int) -> bool:
        return self.shndx[index] == C.SHN_ABS and index not in self.extended


class _Where:
    """A section's description for messages, formatted only if one is raised."""

    def __init__(self, section: Section) -> None:
        self.section = section

    def __str__(self) -> str:
        return f"relocation section [{self.section.index}] {self.section.name!r}"


class RelocTable:
    """One SHT_REL/SHT_RELA section, as columns indexed by entry number."""

    def __init__(self, elf: ElfFile, section: Section) -> None:
        lay: ClassLayout = elf.layout
        self.section = section
        self.is_rela = section.sh_type == C.SHT_RELA
        self.entsize = lay.reloc_entsize(section.sh_type)
        where = _Where(section)
        if section.sh_entsize != self.entsize:
            raise InputError(f"{where}: sh_entsize {section.sh_entsize} (expected {self.entsize})")
        if section.sh_size % self.entsize:
            raise InputError(f"{where}: size {section.sh_size} is not a multiple of {self.entsize}")
        self.target = section.sh_info
        self.count = section.sh_size // self.entsize
        idx, ent = section.index, self.entsize
        self.offsets = elf.field_column(idx, lay.rel_offset, ent)
        self.types = elf.field_column(idx, lay.rel_type, ent)
        if lay.rel_sym is not None:
            self.syms = elf.field_column(idx, lay.rel_sym, ent)
        else:
            shift = lay.r_sym_shift
            self.syms = array("I", [i >> shift for i in elf.field_column(idx, lay.rel_info, ent)])
        self.addends: array[int] | None = elf.field_column(idx, lay.rela_addend, ent) if self.is_rela else None
        if self.count:
            nsym = elf.symbols.count
            if max(self.syms) >= nsym:
                bad = next(i for i, s in enumerate(self.syms) if s >= nsym)
                raise InputError(
                    f"{where}: entry {bad} (offset {self.offsets[bad]:#x}) uses symbol {self.syms[bad]}, "
                    f"but the symbol table has {nsym} entries"
                )
            if not 0 < self.target < len(elf.sections):
                raise InputError(f"{where}: sh_info {self.target} is not the index of a section it relocates")
            tsize = elf.sections[self.target].sh_size
            if max(self.offsets) >= tsize:
                bad = next(i for i, o in enumerate(self.offsets) if o >= tsize)
                raise InputError(
                    f"{where}: entry {bad} offset {self.offsets[bad]:#x} is outside its target section "
                    f"[{self.target}] {elf.sections[self.target].name!r} (size {tsize:#x})"
                )


_FAULT_AROUND = 1 << 21
# Relocation tables validated per batch (bounds what a mapped file holds in memory at once).
_CHECK_BATCH = 2048


class ElfFile:
    """A parsed, validated ELF relocatable object held in memory."""

    def __init__(
        self,
        data: bytes | mmap.mmap,
        name: str = "<input>",
        max_sections: int | None = None,
        max_name_len: int | None = None,
    ) -> None:
        # The caller's limits (None: none): fewer than max_sections sections
        # (SectionCountError otherwise, raised before any header is read), and
        # section and symbol names of at most max_name_len bytes.
        self.max_sections = max_sections
        self.max_name_len = max_name_len
        self.data = data
        self.view = memoryview(data)
        self.name = name
        self._parse_ident()
        self._parse_header()
        self._parse_sections()
        self.symtab_index = self._find_symtab()
        self._relocs: dict[int, RelocTable] = {}

    # -- header -------------------------------------------------------------

    def _parse_ident(self) -> None:
        d = self.data
        if len(d) < 16 or d[:4] != C.ELFMAG:
            raise InputError("not an ELF file (bad magic)")
        if d[C.EI_CLASS] not in (C.ELFCLASS32, C.ELFCLASS64):
            raise InputError(f"unknown ELF class {d[C.EI_CLASS]}")
        if d[C.EI_DATA] != C.ELFDATA2LSB:
            raise UnsupportedObject("byte order", "", "big-endian or unknown byte order: only little-endian is read")
        if d[C.EI_VERSION] != C.EV_CURRENT:
            raise InputError(f"unknown ELF version {d[C.EI_VERSION]}")
        self.elfclass = d[C.EI_CLASS]
        self.layout = layout_for(self.elfclass)

    def _parse_header(self) -> None:
        lay = self.layout
        if len(self.data) < lay.ehdr.size:
            raise InputError(f"truncated ELF header ({len(self.data)} bytes, need {lay.ehdr.size})")
        (
            self.ident,
            self.e_type,
            self.e_machine,
            self.e_version,
            self.e_entry,
            self.e_phoff,
            self.e_shoff,
            self.e_flags,
            self.e_ehsize,
            self.e_phentsize,
            self.e_phnum,
            self.e_shentsize,
            self.e_shnum,
            self.e_shstrndx,
        ) = lay.ehdr.unpack_from(self.data, 0)
        kinds = {C.ET_EXEC: "ET_EXEC (an executable)", C.ET_DYN: "ET_DYN (a shared object)"}
        if self.e_type != C.ET_REL:
            kind = kinds.get(self.e_type, f"e_type {self.e_type}")
            raise UnsupportedObject("type", kind, f"{kind}: not a relocatable object (ET_REL)")

    def _section_header(self, index: int) -> tuple[int, ...]:
        off = self.e_shoff + index * self.layout.shdr.size
        if off + self.layout.shdr.size > len(self.data):
            raise InputError(f"section header [{index}] at {off:#x} is past the end of the file")
        return self.layout.shdr.unpack_from(self.data, off)

    def _parse_sections(self) -> None:
        lay = self.layout
        size = len(self.data)
        if self.e_shoff == 0:
            raise InputError("the object has no section header table (e_shoff is 0)")
        if self.e_shentsize != lay.shdr.size:
            raise InputError(f"e_shentsize {self.e_shentsize} (expected {lay.shdr.size})")
        if self.e_shoff >= size:
            raise InputError(f"section header table at {self.e_shoff:#x} is past the end of the file ({size:#x} bytes)")
        if self.e_shoff < lay.ehdr.size:
            raise InputError(f"section header table at {self.e_shoff:#x} overlaps the ELF header")
        shnum = self.e_shnum
        shstrndx = self.e_shstrndx
        if shnum == 0 or shstrndx == C.SHN_XINDEX:
            # Extended numbering: the real values live in section header 0.
            h0 = self._section_header(0)
            if shnum == 0:
                shnum = h0[5]
            if shstrndx == C.SHN_XINDEX:
                shstrndx = h0[6]
            if shnum == 0:
                raise InputError("e_shnum is 0 and section header 0 gives no section count")
        if self.max_sections is not None and shnum >= self.max_sections:
            raise SectionCountError(shnum, self.max_sections)
        if self.e_shoff + shnum * lay.shdr.size > size:
            raise InputError(f"section header table ({shnum} entries at {self.e_shoff:#x}) is past the end of the file")
        self.shnum = shnum
        if not 0 < shstrndx < shnum:
            raise InputError(f"e_shstrndx {shstrndx} is not a section index (the object has {shnum} sections)")
        self.shstrndx = shstrndx
        table = self.view[self.e_shoff : self.e_shoff + shnum * lay.shdr.size]
        h = lay.shdr.unpack_from(table, shstrndx * lay.shdr.size)
        if h[1] != C.SHT_STRTAB or h[4] > size or h[5] > size - h[4]:
            raise InputError(f"section [{shstrndx}] named by e_shstrndx is not a string table inside the file")
        shstr = StringTable(bytes(self.view[h[4] : h[4] + h[5]]), f"section name table [{shstrndx}]", self.max_name_len)
        self.sections = secs = SectionTable(table, lay, shstr)
        # The header table is read into columns (copies): a mapped file's pages of it can go
        # before the checks below make their own temporaries.
        self.release(self.e_shoff, self.e_shoff + shnum * lay.shdr.size)
        # Every check below runs over columns (C speed), and finds the culprit
        # only when one exists.
        limit = len(shstr.data)
        if max(secs.name_off) >= limit:
            i = next(i for i, o in enumerate(secs.name_off) if o >= limit)
            raise InputError(f"section [{i}]: name offset {secs.name_off[i]} is outside the section name table")
        linked = C.DYNAMIC_LINKING_SECTION_TYPES.keys() & set(secs.type)
        if linked:
            i = next(i for i, t in enumerate(secs.type) if t in linked)
            kind = C.DYNAMIC_LINKING_SECTION_TYPES[secs.type[i]]
            found = f"section [{i}] {secs[i].name!r}: type {kind} ({secs.type[i]}) belongs to a linked object"
            raise UnsupportedObject("linked section", found, f"{found}, not to a relocatable object")
        # A relocation section is a table of entries whatever it relocates
        # (a loader may skip one with no loaded target; other readers do not).
        # Checked as columns (C loops); only a table that fails is found by the walk.
        tables = secs.tables
        entsize_of = {t: lay.reloc_entsize(t) for t in (C.SHT_REL, C.SHT_RELA)}
        ents = list(map(entsize_of.__getitem__, map(secs.type.__getitem__, tables)))
        if list(map(secs.entsize.__getitem__, tables)) != ents or any(
            map(mod, map(secs.size.__getitem__, tables), ents)
        ):
            for i, ent in zip(tables, ents, strict=True):
                if secs.entsize[i] != ent:
                    raise InputError(f"{_Where(secs[i])}: sh_entsize {secs.entsize[i]} (expected {ent})")
                if secs.size[i] % ent:
                    raise InputError(f"{_Where(secs[i])}: size {secs.size[i]} is not a multiple of {ent}")
        # Where each section's data ends (0: none), as an array: a list of 100k
        # ints, and a tuple per section for the overlap sweep, were most of a
        # stress object's parse peak. Ints are made one at a time by C iterators.
        has_data = secs.data_mask
        if max(compress(map(add, secs.offset, secs.size), has_data), default=0) > size:
            i = next(i for i in compress(count(), has_data) if secs.offset[i] + secs.size[i] > size)
            sec = secs[i]
            raise InputError(
                f"section [{i}] {sec.name!r}: data at {sec.sh_offset:#x}+{sec.sh_size:#x} is past the end "
                f"of the file ({size:#x} bytes)"
            )
        ends = array("Q", map(mul, map(add, secs.offset, secs.size), has_data))  # each at most the file size
        for align in set(secs.addralign):
            if align > 1 and align & (align - 1):
                i = secs.addralign.index(align)
                raise InputError(f"section [{i}] {secs[i].name!r}: sh_addralign {align} is not a power of two")
        self._check_overlaps(ends)

    def _check_overlaps(self, ends: array[int]) -> None:
        """No two of the ELF header, the section header table and the sections' data share a byte.

        With every span holding a byte, none overlap exactly when the k+1-th
        smallest start is at or past the k-th smallest end (then no byte is in
        two spans). Starts and ends are sorted apart, each as one array (C
        loops, a list of ints at a time); only an object that fails is walked
        span by span (:meth:`_overlap`), to name the two.
        """
        lay = self.layout
        starts = self.sections.offset
        full = bytes(map(gt, ends, starts))  # the spans holding a byte
        special = ((0, lay.ehdr.size), (self.e_shoff, self.e_shoff + self.shnum * lay.shdr.size))
        lo = array("Q", sorted([*compress(starts, full), *(a for a, _b in special)]))
        hi = array("Q", sorted([*compress(ends, full), *(b for _a, b in special)]))
        if any(map(lt, islice(lo, 1, None), hi)):
            self._overlap(ends)

    def _overlap(self, ends: array[int]) -> None:
        """Raise the overlap :meth:`_check_overlaps` found, naming the first two spans that share a byte."""
        lay = self.layout
        secs = self.sections
        starts = secs.offset
        spans = [(starts[i], e, i) for i, e in enumerate(ends) if e > starts[i]]
        spans.sort()
        insort(spans, (0, lay.ehdr.size, -1))
        insort(spans, (self.e_shoff, self.e_shoff + self.shnum * lay.shdr.size, -2))
        end, owner = 0, -1
        for off, stop, who in spans:
            if off < end:

                def what(k: int) -> str:
                    if k == -1:
                        return "the ELF header"
                    if k == -2:
                        return "the section header table"
                    return f"section [{k}] {secs[k].name!r}"

                raise InputError(f"{what(who)} at {off:#x} overlaps {what(owner)}")
            if stop > end:
                end, owner = stop, who
        raise AssertionError("_check_overlaps found an overlap the walk does not")

    def _find_symtab(self) -> int:
        found = list(compress(count(), map(C.SHT_SYMTAB.__eq__, self.sections.type)))
        if not found:
            raise InputError("the object has no symbol table (stripped?)")
        if len(found) > 1:
            tables = f"the object has {len(found)} symbol tables (sections {found})"
            raise UnsupportedObject("symbol tables", tables, f"{tables}; an object has at most one")
        return found[0]

    # -- access ---------------------------------------------------------------

    def section_data(self, index: int) -> memoryview:
        secs = self.sections
        if not secs.has_file_data(index):  # section 0 has no contents, whatever its header says
            return self.view[0:0]
        off = secs.offset[index]
        return self.view[off : off + secs.size[index]]

    def release(self, lo: int = 0, hi: int | None = None) -> None:
        """Let the pages of bytes ``[lo, hi)`` of a mapped file go from this process.

        They stay in the page cache and come back on the next read. A file in
        memory (bytes) is unaffected. A pass over most of a mapped file calls
        this as it goes, so that the process does not end up holding all of it.
        """
        data = self.data
        if isinstance(data, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            # A read fault maps neighbouring cached pages too (Linux maps a
            # whole large folio, up to 2 MiB, or 64 KiB of fault-around):
            # let those go with the ones read.
            start = lo - lo % _FAULT_AROUND
            end = len(data) if hi is None else min(hi + -hi % _FAULT_AROUND, len(data))
            if end > start:
                data.madvise(mmap.MADV_DONTNEED, start, end - start)

    def section_by_name(self, name: str) -> Section | None:
        """The first section with this name (what a lookup by name finds)."""
        i = self.sections.find(name)
        return None if i is None else self.sections[i]

    @cached_property
    def symbols(self) -> SymbolTable:
        return SymbolTable(self, self.sections[self.symtab_index])

    @property
    def relocation_tables(self) -> list[int]:
        """Indices of every REL/RELA section whose entries name this object's symbols.

        Header 0 is the reserved null entry (it carries e_shnum/e_shstrndx
        overflow, not a section), whatever its sh_type says. Not kept: only
        an edit that renumbers symbols needs the ones relocation_sections omits.
        """
        symtab, link = self.symtab_index, self.sections.link
        return [i for i in self.sections.tables if link[i] == symtab]

    @cached_property
    def relocation_sections(self) -> Sequence[int]:
        """Indices of the relocation tables that apply to a section of the object (sh_info a section index).

        What a loader makes of the other REL/RELA sections (a foreign sh_link,
        a target that is not a section) is the caller's rule, not the reader's.
        An array, kept for the object's life: a stress object's 50k indices as
        4 bytes each, not an int object each.
        """
        secs = self.sections
        symtab, n = self.symtab_index, len(secs)
        link, info = secs.link, secs.info
        return array("I", [i for i in secs.tables if link[i] == symtab and 0 < info[i] < n])

    @cached_property
    def _tables_by_target(self) -> tuple[array[int], array[int]]:
        """relocation_sections sorted by the section each relocates (index order within one), and those sections."""
        info = self.sections.info
        tables = array("I", sorted(self.relocation_sections, key=info.__getitem__))
        return tables, array("I", map(info.__getitem__, tables))

    def tables_relocating(self, section: int) -> Sequence[int]:
        """The relocation tables whose target is ``section``, in index order.

        Found by bisection: a stress object has 50k tables, and a dict of lists of them costs 10 MB.
        """
        tables, targets = self._tables_by_target
        lo = bisect_left(targets, section)
        return tables[lo : bisect_right(targets, section, lo)]

    # -- relocation tables without building them ----------------------------
    #
    # A stress object has 50k relocation sections. Tables adjacent in the file
    # are read as runs (lp_rewrite/elf/runs.py): one strided view per field
    # over the file-wide typed view, a C loop per run.

    @cached_property
    def _typed_views(self) -> dict[str, memoryview]:
        return {}

    def typed_view(self, fmt: str) -> memoryview:
        """The whole file cast once per item format (its tail short of an item cut off), for strided reads."""
        view = self._typed_views.get(fmt)
        if view is None:
            item = ITEM_SIZE[fmt]
            n = len(self.view) - len(self.view) % item
            view = self._typed_views[fmt] = self.view[:n].cast(fmt)  # type: ignore[call-overload]
        return view

    def field_column(self, index: int, field: tuple[str, int], entsize: int) -> array[int]:
        """One field of every entry of a section, read through a file-wide view."""
        fmt, off = field
        secs = self.sections
        start, size = secs.offset[index], secs.size[index]
        item = ITEM_SIZE[fmt]
        if _NATIVE_LE and not start % item and not entsize % item and not off % item and secs.has_file_data(index):
            view = self.typed_view(fmt)
            return array(fmt, view[(start + off) // item : (start + size) // item : entsize // item].tobytes())
        return column(self.section_data(index), field, entsize)

    @cached_property
    def _runs(self) -> RunIndex:
        return RunIndex(self)

    def relocation_runs(self, indices: Iterable[int]) -> list[RelocationRun]:
        """These relocation sections, by run of tables adjacent in the file (:mod:`lp_rewrite.elf.runs`)."""
        return self._runs.select(self, indices)

    def check_relocations(self, indices: Iterable[int]) -> None:
        """Validate symbol indices and places of these sections (as RelocTable does).

        Per run of adjacent tables, a batch of tables at a time: the highest
        symbol index, and each table's highest place, are C loops over the
        run's columns (a mapped file's pages are let go after each batch).
        Only a batch that fails is built table by table, as RelocTables,
        whose checks name the entry.
        """
        secs = self.sections
        nsec, nsym = len(secs), self.symbols.count
        sizes, targets = secs.size, secs.info
        for run in self.relocation_runs(indices):
            for k in range(0, len(run.sections), _CHECK_BATCH):
                part = slice(k, k + _CHECK_BATCH)
                tables, starts, stops = run.sections[part], run.starts[part], run.stops[part]
                # The tables with entries: each needs a target section, with room for every place.
                full = list(map(int.__lt__, starts, stops))
                if not any(full):
                    continue
                slices = list(compress(map(slice, starts, stops), full))
                goals = list(map(targets.__getitem__, compress(tables, full)))
                # A whole run's symbols are one column; a part's, each table's rows.
                whole = run.whole and len(tables) == len(run.sections)
                highest_sym = max(run.syms) if whole else max(map(max, map(run.syms.__getitem__, slices)))
                ok = highest_sym < nsym and min(goals) > 0 and max(goals) < nsec
                if ok:
                    highest = map(max, map(run.offsets.__getitem__, slices))
                    ok = not any(map(int.__ge__, highest, map(sizes.__getitem__, goals)))
                if not ok:
                    for i in tables:
                        self.relocations(i)
                self.release(secs.offset[tables[0]], secs.offset[tables[-1]] + sizes[tables[-1]])

    def relocations(self, index: int) -> RelocTable:
        table = self._relocs.get(index)
        if table is None:
            table = RelocTable(self, self.sections[index])
            self._relocs[index] = table
        return table
