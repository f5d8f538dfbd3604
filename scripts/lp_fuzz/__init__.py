"""The long fuzz run: millions of mutated payloads through the reader and rewriter.

The contract under test is the command line's, checked in-process (no
subprocess per input): for any bytes, ``explain``, ``check`` and ``rewrite``
either succeed -- and then the rewrite's output passed the built-in proof,
the ``verify`` certificate (:func:`lp_rewrite.certificate.certify`, what
``rewrite --verify`` runs) and a second run on it is a byte-identical no-op
-- or fail with an exit-2 error whose message is one line. The certificate
may refuse only the *original*, the way Xen's loader would (then
``rewrite --verify`` exits 2), and it must refuse the original against
itself the same way. Anything else is a *crash*: another exception (the
CLI's exit 70), a failed proof or a certificate that disagrees with an
accepted rewrite (exit 1), a hang (more than ``--timeout`` CPU seconds), or
a memory blow-up. Each crash is counted under its *site* (exception type and
innermost project frame; for a certificate disagreement, also the shape of
its message) and its input saved under ``--crash-dir``.

Inputs are the committed fixtures (all three architectures) plus variants
this script derives from them (extended section numbering, a
``.symtab_shndx`` section), mutated by a structure-aware mutator -- it edits
fields of the ELF header, section headers, symbols, relocations,
``.livepatch.funcs`` entries, relocated places and string tables, with
boundary values -- mixed with plain byte flips, splices and truncation.

Engines:

* ``atheris`` (default when installed: ``pip install atheris``): libFuzzer,
  coverage-guided, with the structure-aware mutator mixed with libFuzzer's.
* ``builtin``: a seeded mutation loop with a pool of accepted mutants
  (reproducible with ``--seed``; no extra dependency).

Examples::

    python scripts/fuzz.py --runs 1000000 --jobs 2            # the long run
    python scripts/fuzz.py --engine builtin --runs 20000      # quick, reproducible
    python scripts/fuzz.py --replay fuzz-crashes/             # re-run saved crashes

Exit status: 0 when no crash (certificate disagreements included) was
found, 1 otherwise.

Modules: :mod:`lp_fuzz.seeds` (the fixtures and the variants derived from
them), :mod:`lp_fuzz.fields` (the field locator, shared with
tests/test_fuzz.py's hypothesis run), :mod:`lp_fuzz.mutate` (the mutator),
:mod:`lp_fuzz.target` (the contract, one input at a time),
:mod:`lp_fuzz.engines` (the harness, the built-in and atheris engines) and
:mod:`lp_fuzz.cli` (the driver and ``--replay``); scripts/fuzz.py is the
command line.
"""
