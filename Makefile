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

.PHONY: setup browser book test unit nbval book-strict browser-test info clean

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

book: setup
	$(call timed,book build,$(BIN)/jupyter-book build --all $(JB_FLAGS) .)
	@echo "The book: $(CURDIR)/_build/html/index.html"

unit: setup
	$(call timed,unit tests,$(BIN)/python -m pytest -q tests --ignore=tests/browser)

nbval: setup
	$(call timed,nbval,$(BIN)/python -m pytest -q --nbval-lax notebooks)

book-strict: setup
	$(call timed,book build -W,$(BIN)/jupyter-book build --all -W $(JB_FLAGS) .)

browser-test: setup browser
	$(call timed,browser test,ATTN_COURSE_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q tests/browser)

test: setup browser
	$(MAKE) --no-print-directory unit
	$(MAKE) --no-print-directory nbval
	$(MAKE) --no-print-directory book-strict
	$(MAKE) --no-print-directory browser-test

info: setup
	$(BIN)/python -m attn_course info

clean:
	rm -rf _build .pytest_cache
