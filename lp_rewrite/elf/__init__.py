"""In-house ELF layer: read and write relocatable objects by index.

The rewriter never goes through a third-party ELF library on its own path:
reading must be fast on large relocation tables (``struct``/``memoryview``),
and writing must address symbols by index, never by name (two symbols in a
payload may legitimately share a name: the renamed replacement's old name and
the injected alias).

``file.py`` reads and validates (its limits are the caller's parameters),
``editor.py`` edits by index (symbols inserted with an index map, every
symbol reference renumbered, relocation entries and header fields set) and
``writer.py`` lays the result out. What Xen accepts or refuses is decided
above this package (:mod:`lp_rewrite.read`, :mod:`lp_rewrite.apply`).
"""
