"""In-house ELF layer: read and write relocatable objects by index.

The rewriter never goes through a third-party ELF library on its own path:
reading must be fast on large relocation tables (``struct``/``memoryview``),
and writing must address symbols by index, never by name (two symbols in a
payload may legitimately share a name: the renamed replacement's old name and
the injected alias).
"""
