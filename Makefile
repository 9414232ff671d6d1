# Two entry points: `make demo` and `make test` (see README.md). Both create .venv,
# install hpatch with its C extension, and need only python3 (with venv and headers)
# and a C compiler.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORPUS_FETCH := ../shared/corpus/fetch.sh
HPCORPUS ?= $(HOME)/.cache/hpatch-corpus
DEMO_IMAGES := samples/bin/x64-clang/v1/sample.stripped.dll samples/bin/arm64-clang/v1/sample.stripped.dll

.PHONY: demo test lint corpus browser cves bench clean sanitize fuzz realworld reliability

$(STAMP): pyproject.toml setup.py native/*.c native/*.h native/constants.py hpatch/arch/kinds.py hpatch/arch/base.py
	@$(PYTHON) -m venv $(VENV) || { echo "make: '$(PYTHON) -m venv' failed (Debian: apt-get install python3-venv python3-dev)" >&2; exit 1; }
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

DEMO_BUILD := samples/bin/x64-clang

demo: $(STAMP)
	@for image in $(DEMO_IMAGES); do $(BIN)/hpatch info $$image && $(BIN)/hpatch funcs $$image || exit 1; done
	@# month 2 (cumulative security fixes): hotpatchable, exit 0
	$(BIN)/hpatch diff $(DEMO_BUILD)/v1/sample.stripped.dll $(DEMO_BUILD)/v3/sample.stripped.dll
	@# the fixes as signed cumulative packages (month 1: v2, month 2: v3), and what one holds
	@rm -f $(VENV)/demo.key $(VENV)/demo.key.pub $(VENV)/demo-2.hpk $(VENV)/demo-3.hpk $(VENV)/demo-arm64.hpk
	$(BIN)/hpatch keygen $(VENV)/demo.key
	$(BIN)/hpatch diff $(DEMO_BUILD)/v1/sample.stripped.dll $(DEMO_BUILD)/v2/sample.stripped.dll -o $(VENV)/demo-2.hpk --sequence 2 --supersedes 1-1 --description "month 1 security fixes" --sign-key $(VENV)/demo.key > /dev/null
	$(BIN)/hpatch diff $(DEMO_BUILD)/v1/sample.stripped.dll $(DEMO_BUILD)/v3/sample.stripped.dll -o $(VENV)/demo-3.hpk --sequence 3 --supersedes 1-2 --description "month 2 security fixes" --sign-key $(VENV)/demo.key > /dev/null
	$(BIN)/hpatch inspect $(VENV)/demo-3.hpk --trust $(VENV)/demo.key.pub
	@# proof: translation validation and differential emulation against the v3 build
	$(BIN)/hpatch verify $(DEMO_BUILD)/v1/sample.stripped.dll $(DEMO_BUILD)/v3/sample.stripped.dll $(VENV)/demo-3.hpk
	@# v1 in the emulator: the exploit input overruns dst (a guard-page fault), month 1 fixes it,
	@# month 2 replaces month 1 in one step, and the rollback restores the baseline byte for byte
	$(BIN)/hpatch apply $(DEMO_BUILD)/v1/sample.stripped.dll $(VENV)/demo-2.hpk $(VENV)/demo-3.hpk --trust $(VENV)/demo.key.pub --rollback --call hp_json_escape bytes:01 1 buffer:4 4
	@# the same on ARM64, loaded away from its preferred base
	$(BIN)/hpatch diff samples/bin/arm64-clang/v1/sample.stripped.dll samples/bin/arm64-clang/v3/sample.stripped.dll -o $(VENV)/demo-arm64.hpk --sequence 3 --sign-key $(VENV)/demo.key > /dev/null
	$(BIN)/hpatch apply samples/bin/arm64-clang/v1/sample.stripped.dll $(VENV)/demo-arm64.hpk --base 0x7ff600000000 --trust $(VENV)/demo.key.pub --rollback --call hp_tlv_copy_string bytes:02040041424344 7 2 buffer:4 4
	@# the feature update changes global data: not hotpatchable, exit 3 (expected here)
	$(BIN)/hpatch diff $(DEMO_BUILD)/v1/sample.stripped.dll $(DEMO_BUILD)/v4/sample.stripped.dll || test $$? -eq 3
	@# a whole release: two trees of DLLs for both machines, serviced at once (a fix packaged
	@# on x64 and ARM64, a new global carried, one DLL unchanged, one feature update blocked,
	@# one malformed file recorded as an error: exit 1 says so), signed as a set
	@rm -rf $(VENV)/demo-release && mkdir -p $(VENV)/demo-release/old/x64 $(VENV)/demo-release/old/arm64 $(VENV)/demo-release/new/x64 $(VENV)/demo-release/new/arm64
	@cp $(DEMO_BUILD)/v1/sample.stripped.dll $(VENV)/demo-release/old/x64/sample.dll
	@cp $(DEMO_BUILD)/v3/sample.stripped.dll $(VENV)/demo-release/new/x64/sample.dll
	@cp samples/bin/arm64-clang/v1/sample.stripped.dll $(VENV)/demo-release/old/arm64/sample.dll
	@cp samples/bin/arm64-clang/v3/sample.stripped.dll $(VENV)/demo-release/new/arm64/sample.dll
	@cp $(DEMO_BUILD)/v3/sample.stripped.dll $(VENV)/demo-release/old/x64/quota.dll
	@cp $(DEMO_BUILD)/global-v3/sample.stripped.dll $(VENV)/demo-release/new/x64/quota.dll
	@cp $(DEMO_BUILD)/v1/samplehost.dll $(VENV)/demo-release/old/x64/samplehost.dll
	@cp $(DEMO_BUILD)/v1/samplehost.dll $(VENV)/demo-release/new/x64/samplehost.dll
	@cp $(DEMO_BUILD)/v1/sample.stripped.dll $(VENV)/demo-release/old/x64/feature.dll
	@cp $(DEMO_BUILD)/v4/sample.stripped.dll $(VENV)/demo-release/new/x64/feature.dll
	@cp $(DEMO_BUILD)/v1/sample.stripped.dll $(VENV)/demo-release/old/x64/broken.dll
	@head -c 4096 $(DEMO_BUILD)/v3/sample.stripped.dll > $(VENV)/demo-release/new/x64/broken.dll
	$(BIN)/hpatch release $(VENV)/demo-release/old $(VENV)/demo-release/new -o $(VENV)/demo-release/out --sequence 3 --sign-key $(VENV)/demo.key --inputs 20 || test $$? -eq 1
	$(BIN)/hpatch inspect --release $(VENV)/demo-release/out --trust $(VENV)/demo.key.pub
	@echo "release report: $(VENV)/demo-release/out/index.html (open it in a browser); manifest: $(VENV)/demo-release/out/release.json, packages in $(VENV)/demo-release/out/packages"

lint: $(STAMP)
	$(BIN)/ruff check hpatch tests bench native/constants.py setup.py
	$(BIN)/ruff format --check hpatch tests bench native/constants.py setup.py
	$(BIN)/mypy hpatch

# The real-world corpus (pairs of MSVC-built DLLs from public wheels) is fetched when
# the shared fetch script is present; the corpus tests run only when it is there.
corpus: $(STAMP)
	@if [ -f $(CORPUS_FETCH) ] && [ ! -s $(HPCORPUS)/pairs.tsv ]; then \
		HPCORPUS=$(HPCORPUS) PYTHON=$(BIN)/python bash $(CORPUS_FETCH) || echo "make: corpus fetch failed; corpus tests will not run" >&2; \
	fi

# The release report (OUT_DIR/index.html) is tested in a real headless browser: Debian's
# chromium, installed here when it is not on PATH (as root, else through sudo), so that
# its test can run (it fails, saying so, without one).
browser:
	@command -v chromium > /dev/null || { \
		if [ "$$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi; \
		$$sudo apt-get update -q && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -q -y --no-install-recommends chromium \
		&& command -v chromium > /dev/null \
		|| { echo "make: cannot install chromium, which the release report test needs (Debian: apt-get install chromium)" >&2; exit 1; }; }

# Both runs spread the tests over the machine's cores, a test module to a worker (its
# fixtures are made once); PYTEST_JOBS=0 runs them in this process.
PYTEST_JOBS ?= auto
PARALLEL = -n $(PYTEST_JOBS) --dist loadscope
test: $(STAMP) lint corpus browser
	HPATCH_REQUIRE_NATIVE=1 $(BIN)/python -m pytest -q $(PARALLEL) --ignore=tests/cves
	HPATCH_PURE_PYTHON=1 $(BIN)/python -m pytest -q $(PARALLEL) --ignore=tests/cves

# `make cves`: the CVE corpora (real security fixes built as DLLs for the four builds,
# with ground truth; ../shared/cves/build.sh, about 10 minutes on 2 cores the first
# time, then tests/cves/extra/build.sh for three libraries hpatch was not developed
# against, about as long) and the tests that hold hpatch to them (tests/cves: self
# and rebased diffs, the modified sets against the truth, packages and their proofs).
# The tests skip, saying so, when no corpus is built.
CVES_BUILD := ../shared/cves/build.sh
HPCVES ?= $(HOME)/.cache/hpatch-cves
HPCVES_EXTRA ?= $(HOME)/.cache/hpatch-cves-extra
cves: $(STAMP)
	@if [ -f $(CVES_BUILD) ] && [ ! -s $(HPCVES)/pairs.tsv ]; then \
		HPCVES=$(HPCVES) PYTHON=$(BIN)/python bash $(CVES_BUILD) || echo "make: CVE corpus build failed; its tests will skip" >&2; \
	fi
	@if [ -f $(CVES_BUILD) ] && [ ! -s $(HPCVES_EXTRA)/pairs.tsv ]; then \
		HPCVES_EXTRA=$(HPCVES_EXTRA) PYTHON=$(BIN)/python bash tests/cves/extra/build.sh || echo "make: second CVE corpus build failed; its pairs are left out" >&2; \
	fi
	HPCVES=$(HPCVES) HPCVES_EXTRA=$(HPCVES_EXTRA) HPATCH_REQUIRE_NATIVE=1 $(BIN)/python -m pytest -q $(PARALLEL) tests/cves

# `make sanitize`: the C core built with AddressSanitizer and UndefinedBehaviorSanitizer
# out of tree, its tests, then a bounded fuzz run against the pure-Python twin
# (FUZZ_SECONDS in all; tests/fuzz/run.py). tests/fuzz/sanitized.py makes the sanitized
# build the one imported and refuses to run otherwise. Python itself is not
# instrumented, so the ASan runtime is preloaded (it comes with gcc: Debian's libasan8),
# with libstdc++ so that ASan can intercept C++ exceptions (lief's, where a test loads it
# as an oracle); CPython's own
# allocations look like leaks at exit, hence detect_leaks=0.
SAN_CC ?= gcc
SAN_SO := $(VENV)/sanitize/_native.so
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1
SAN_ENV = HPATCH_SANITIZED_NATIVE=$(SAN_SO) HPATCH_REQUIRE_NATIVE=1 ASAN_OPTIONS=detect_leaks=0 \
	UBSAN_OPTIONS=print_stacktrace=1 LD_PRELOAD="$$($(SAN_CC) -print-file-name=libasan.so) $$($(SAN_CC) -print-file-name=libstdc++.so.6)"
SAN_TESTS := tests/test_native_parity.py tests/test_native_rewrite.py tests/arch tests/fuzz
FUZZ_SECONDS ?= 60

$(SAN_SO): $(STAMP) native/*.c native/*.h
	@test -f "$$($(SAN_CC) -print-file-name=libasan.so)" || { echo "make: no libasan.so for $(SAN_CC) (Debian: libasan8, installed with gcc)" >&2; exit 1; }
	@mkdir -p $(@D)
	$(SAN_CC) -shared -fPIC -std=c99 -Wall -Wextra -Werror $(SAN_FLAGS) \
		-I"$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" native/*.c -o $@

sanitize: $(SAN_SO)
	$(SAN_ENV) $(BIN)/python -m pytest -q -p tests.fuzz.sanitized $(SAN_TESTS)
	$(SAN_ENV) $(BIN)/python -m tests.fuzz.run --seconds $(FUZZ_SECONDS)

fuzz: $(SAN_SO)
	$(SAN_ENV) $(BIN)/python -m tests.fuzz.run --seconds $(FUZZ_SECONDS)

# `make reliability`: the figures of docs/reliability.md at full scale (fuzzing for
# RELIABILITY_SECONDS per target, every bit flip, every injected fault, 5,000
# patch-under-load trials per architecture); `make test` runs bounded versions.
RELIABILITY_SECONDS ?= 300

reliability: $(STAMP) corpus
	$(BIN)/python -m tests.reliability.figures --seconds $(RELIABILITY_SECONDS)

bench: $(STAMP) corpus
	$(BIN)/python bench/bench_funcs.py

# `make realworld`: funcs, diff, package and verify on every real-world pair; the table
# goes to docs/realworld.md, its chart to docs/realworld.svg (bsdiff4 and zstd from the
# bench extra).
HPCORPUS_EXTRA ?= $(HOME)/.cache/hpatch-corpus-extra
realworld: $(STAMP) corpus
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	@if [ -f $(CORPUS_FETCH) ] && [ ! -s $(HPCORPUS_EXTRA)/pairs.tsv ]; then \
		HPCORPUS=$(HPCORPUS_EXTRA) PYTHON=$(BIN)/python bash $(CORPUS_FETCH) $(CURDIR)/bench/realworld-pairs.tsv; \
	fi
	@if [ -f $(CVES_BUILD) ] && [ ! -s $(HPCVES)/pairs.tsv ]; then HPCVES=$(HPCVES) PYTHON=$(BIN)/python bash $(CVES_BUILD); fi
	@if [ -f $(CVES_BUILD) ] && [ ! -s $(HPCVES_EXTRA)/pairs.tsv ]; then HPCVES_EXTRA=$(HPCVES_EXTRA) PYTHON=$(BIN)/python bash tests/cves/extra/build.sh; fi
	$(BIN)/python bench/realworld.py --extra $(HPCORPUS_EXTRA) --cves $(HPCVES) --cves-extra $(HPCVES_EXTRA) --markdown docs/realworld.md --svg docs/realworld.svg

clean:
	rm -rf $(VENV) build *.egg-info hpatch/_native*.so
