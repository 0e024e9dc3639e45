# The course in two commands:  make book  |  make test
# Both create .venv if it is missing and install everything the project needs.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.attn-course-installed
# The local and CI set-up pins torch (a CPU wheel where one is on hand); the package's
# own metadata accepts any torch >= 2.1, so that Colab keeps its own torch.
TORCH_PIN ?= torch==2.13.0
CHROMIUM ?= /usr/bin/chromium
JB_FLAGS := -n --keep-going

# Notebooks run with notebooks/ as their working directory: make the data root absolute.
ifdef ATTN_COURSE_DATA
export ATTN_COURSE_DATA := $(abspath $(ATTN_COURSE_DATA))
endif

# Print how long a step took: $(call timed,NAME,COMMAND)
timed = @start=$$(date +%s); $(2); status=$$?; \
	echo "[make] $(1): $$(( $$(date +%s) - start )) s"; exit $$status

.PHONY: setup browser book test quick unit unit-quick notebooks nbval book-build book-strict browser-test \
	stress info clean student gpu-profile web web-runtime web-models serve

$(STAMP): pyproject.toml
	@start=$$(date +%s); \
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) && \
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)" -e ".[dev]" && \
	touch $(STAMP) && \
	echo "[make] set-up (.venv, $$(du -sh $(VENV) | cut -f1)): $$(( $$(date +%s) - start )) s"

setup: $(STAMP)

# Debian's Chromium for the browser test (never `playwright install`: it downloads a browser).
browser:
	@test -x $(CHROMIUM) || { \
		echo "installing Debian's chromium for the browser test"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

# Execute every chapter notebook once, in a fresh kernel; a failing cell fails the target and
# names the report. The results go into the book's execution cache, so the build shows them.
notebooks: setup
	$(call timed,notebooks,$(BIN)/python tools/execute_notebooks.py)

# The build must not hide a notebook that failed there (jupyter-book exits 0 without -W):
# any execution report it wrote fails the target with the reports' paths.
check_build_reports = @reports=$$(find _build/html/reports -type f 2>/dev/null); \
	if [ -n "$$reports" ]; then echo "FAILED notebooks in the book build; reports:" >&2; \
	echo "$$reports" | sed 's/^/  /' >&2; exit 1; fi

# The live demos (book/_ext/live_demos.py): onnxruntime-web pinned by web/package-lock.json (npm ci checks
# its sha512; the extension checks each file's SHA-256), and the models exported from the shipped checkpoints.
WEB_RUNTIME := web/node_modules/onnxruntime-web/package.json
WEB_MODELS := _build/web/demos.json

$(WEB_RUNTIME): web/package.json web/package-lock.json
	@command -v npm >/dev/null || { \
		echo "installing Debian's nodejs and npm for the live demos' runtime"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q nodejs npm; }
	$(call timed,web runtime,npm ci --prefix web --ignore-scripts --no-audit --no-fund --loglevel=error)
	@touch $@

$(WEB_MODELS): $(STAMP) attn_course/web.py attn_course/transformer.py attn_course/ram.py \
		attn_course/checkpoints/transformer-dates.pt attn_course/checkpoints/ram-mnist28.pt
	$(call timed,web models,$(BIN)/python -m attn_course export-web --out _build/web --no-parity)

web-runtime: $(WEB_RUNTIME)
web-models: $(WEB_MODELS)
web: web-runtime web-models

# Serve the built book on localhost: the live demos need http (a page opened from a file shows their figures).
PORT ?= 8000
serve:
	@test -f _build/html/index.html || { echo "no book in _build/html: run make book first" >&2; exit 1; }
	$(BIN)/python tools/serve_book.py --port $(PORT)

book: notebooks web
	@rm -rf _build/html/reports
	$(call timed,book build,$(BIN)/jupyter-book build --all $(JB_FLAGS) .)
	$(check_build_reports)
	@echo "The book: $(CURDIR)/_build/html/index.html"

book-strict: setup web
	@rm -rf _build/html/reports
	$(call timed,book build -W,$(BIN)/jupyter-book build --all -W $(JB_FLAGS) .)
	$(check_build_reports)

unit: setup
	$(call timed,unit tests,$(BIN)/python -m pytest -q tests --ignore=tests/browser)

# The unit tests without the ones marked slow (each over a few seconds).
unit-quick: setup
	$(call timed,quick unit tests,$(BIN)/python -m pytest -q -m "not slow" tests --ignore=tests/browser)

# nbval over every notebook: the same checks as `make notebooks`, without filling the book's cache.
nbval: setup
	$(call timed,nbval,$(BIN)/python -m pytest -q --nbval-lax notebooks)

browser-test: setup browser
	$(call timed,browser test,ATTN_COURSE_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q tests/browser)

# Everything CI runs: each notebook is executed once (notebooks), and the book is built from those results.
test: setup browser
	$(MAKE) --no-print-directory unit
	$(MAKE) --no-print-directory notebooks
	$(MAKE) --no-print-directory book-strict
	$(MAKE) --no-print-directory browser-test

# A few minutes: the fast unit tests only.
quick: unit-quick

# Hang stress test: every notebook K times with a short cell timeout; prints hangs per notebook.
K ?= 3
# The student edition: solutions removed, implement-it cells stubbed, in _build/student/
student: setup
	$(BIN)/python tools/student_edition.py

stress: setup
	$(BIN)/python tools/execute_notebooks.py --repeat $(K) --cell-timeout 300 --idle-limit 60 --retry-hangs 0 --no-cache

# Every notebook in the full profile on a CUDA GPU: wall time, peak GPU memory and the key metrics
# per notebook (tools/gpu_profile.py; results in _build/gpu_profile.json). It refuses to run without CUDA.
gpu-profile: setup
	$(call timed,gpu profile,$(BIN)/python tools/gpu_profile.py)

info: setup
	$(BIN)/python -m attn_course info

clean:
	rm -rf _build .pytest_cache
