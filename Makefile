# `make demo` and `make test` work on a fresh machine: they create .venv and install everything
# with the pinned versions in constraints.txt (torch stays on the CPU wheel).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= runs/demo

.PHONY: install demo demo-text test test-fast lint clean sshd chromium

# PyTorch -> .tflite conversion: litert-torch and its closure, versions from constraints.txt,
# --no-deps because its converter's typing-extensions pin would break pydantic (README "TFLite").
TFLITE_CONVERT := litert-torch ai-edge-quantizer litert-converter xdsl ordered-set \
	litert-lm-builder absl-py backports.strenum fire jax jaxlib jaxtyping kagglehub kagglesdk \
	multipledispatch sentencepiece tabulate certifi immutabledict wadler_lindig lark opt_einsum \
	requests termcolor tomli charset-normalizer urllib3

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(PY) -m pip install --quiet -c constraints.txt rich idna
	$(PY) -m pip install --quiet -c constraints.txt --no-deps $(TFLITE_CONVERT)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgecompress demo --out $(OUT)

# The ssh remote-benchmark tests start a real OpenSSH server on 127.0.0.1 (Debian's
# openssh-server); without it (no root, no apt) they skip and say why.
sshd:
	@command -v /usr/sbin/sshd >/dev/null || (apt-get update -qq && apt-get install -y -qq \
		--no-install-recommends openssh-server >/dev/null) || \
		echo "warning: openssh-server not installed: the ssh remote tests will skip"

# tests/test_report_html.py renders report.html in headless Chromium (Debian's chromium);
# without it (no root, no apt) that test skips and says why.
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq \
		--no-install-recommends chromium >/dev/null) || \
		echo "warning: chromium not installed: the report.html browser test will skip"

# Text classification (BERT family) end to end on the Rotten Tomatoes snippets (docs/text.md).
demo-text: $(STAMP)
	$(VENV)/bin/edgecompress run examples/text-classification.yaml --out runs/text

test: $(STAMP) sshd chromium
	$(PY) -m pytest -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check edgecompress tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
