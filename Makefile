# DeepUltrasound: two commands set everything up.
#   make demo   create .venv if needed, install, run the main job on bundled defaults
#   make test   create .venv if needed, install, run the test suite
# A second run installs nothing: the install is redone only when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
# torch is installed first, pinned, only when the environment has none, so that pip does not
# pull a multi-GB CUDA build on CPU machines; a torch already in $(VENV) (e.g. a CUDA build) is kept.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo-output
PYTEST_ARGS ?=

VPY := $(VENV)/bin/python
STAMP := $(VENV)/.deepultrasound-installed

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	@$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install --disable-pip-version-check "$(TORCH_SPEC)"
	$(VPY) -m pip install --disable-pip-version-check -e ".[test,baselines]"
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/deepultrasound demo --output $(DEMO_OUT)

test: $(STAMP)
	$(VPY) -m pytest Testing $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info
