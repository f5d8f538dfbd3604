"""ELF constants used by the project (gABI values; the subset we need)."""

from typing import Final

ELFMAG: Final = b"\x7fELF"
EI_NIDENT: Final = 16
EI_CLASS: Final = 4
EI_DATA: Final = 5
EI_VERSION: Final = 6
EI_OSABI: Final = 7
EI_ABIVERSION: Final = 8

ELFCLASS32: Final = 1
ELFCLASS64: Final = 2
ELFDATA2LSB: Final = 1
ELFDATA2MSB: Final = 2
EV_CURRENT: Final = 1
ELFOSABI_NONE: Final = 0
ELFOSABI_FREEBSD: Final = 9

ET_REL: Final = 1
ET_EXEC: Final = 2
ET_DYN: Final = 3

EM_ARM: Final = 40
EM_X86_64: Final = 62
EM_AARCH64: Final = 183

EF_ARM_EABIMASK: Final = 0xFF000000
EF_ARM_EABI_VER5: Final = 0x05000000

SHT_NULL: Final = 0
SHT_PROGBITS: Final = 1
SHT_SYMTAB: Final = 2
SHT_STRTAB: Final = 3
SHT_RELA: Final = 4
SHT_NOTE: Final = 7
SHT_NOBITS: Final = 8
SHT_REL: Final = 9
SHT_GROUP: Final = 17
SHT_SYMTAB_SHNDX: Final = 18
SHT_LLVM_ADDRSIG: Final = 0x6FFF4C03

# Section types only a linked (dynamic) object has. A relocatable payload
# holding one is damaged or not a payload: Xen would load it as plain data,
# and other ELF readers (pyelftools, LIEF) parse these types by their format.
DYNAMIC_LINKING_SECTION_TYPES: Final = {
    5: "SHT_HASH",
    6: "SHT_DYNAMIC",
    11: "SHT_DYNSYM",
    19: "SHT_RELR",
    0x6FFFFFF6: "SHT_GNU_HASH",
    0x6FFFFFFC: "SHT_SUNW_syminfo",
    0x6FFFFFFD: "SHT_GNU_verdef",
    0x6FFFFFFE: "SHT_GNU_verneed",
    0x6FFFFFFF: "SHT_GNU_versym",
    0x6FFFFFF3: "SHT_SUNW_LDYNSYM",
}

SHF_WRITE: Final = 0x1
SHF_ALLOC: Final = 0x2
SHF_EXECINSTR: Final = 0x4

SHN_UNDEF: Final = 0
SHN_LORESERVE: Final = 0xFF00
SHN_ABS: Final = 0xFFF1
SHN_COMMON: Final = 0xFFF2
SHN_XINDEX: Final = 0xFFFF

STB_LOCAL: Final = 0
STB_GLOBAL: Final = 1
STB_WEAK: Final = 2

STT_NOTYPE: Final = 0
STT_OBJECT: Final = 1
STT_FUNC: Final = 2
STT_TLS: Final = 6
STT_SECTION: Final = 3
STT_FILE: Final = 4

STV_DEFAULT: Final = 0


def st_info(bind: int, typ: int) -> int:
    return (bind << 4) | (typ & 0xF)
