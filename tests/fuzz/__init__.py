"""Fuzzing the native core against its pure-Python twin.

- ``generate.py``: a structure-aware generator of hostile inputs per entry point;
- ``cases.py``: a case as JSON, run on both cores and compared;
- ``run.py``: the bounded fuzz driver (``make fuzz``, and the end of ``make sanitize``);
- ``sanitized.py``: makes the ASan/UBSan build of the extension the one imported;
- ``corpus/``: cases the fuzzer found, replayed by ``test_corpus.py``;
- ``test_regressions.py``: one test per fix those cases led to.
"""
