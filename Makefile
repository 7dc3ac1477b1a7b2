# libra-d2: two commands do everything on a fresh machine.
#   make demo   set up .venv, generate the built-in dataset, train + evaluate Libra R-CNN on CPU
#   make test   set up .venv, run the test suite (make test-long: the long checks left out)
# Options: DETECTRON2_SRC=/path/to/detectron2 (build that source tree instead of the 0.6
# fallback), VENV=folder (default .venv), TORCH_SPEC="torch==... torchvision==...".
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
DEMO_CONFIG ?= configs/builtin/libra_rcnn_R_18_FPN_cpu.yaml
DEMO_OUT ?= output/demo
# the demo trains with torch's fused AdamW kernel (same update up to float rounding; a third
# of the optimizer's time on a 2-core CPU); DEMO_OPTS= trains exactly as the config says.
# DEMO_ARGS: flags of tools/run_demo.py, e.g. DEMO_ARGS=--fresh to retrain from scratch. On a
# processor with native bfloat16 the demo trains under bfloat16 autocast (DEMO_OPTS with
# SOLVER.AMP.ENABLED False keeps float32).
DEMO_OPTS ?= SOLVER.FUSED_OPTIMIZER True
DEMO_ARGS ?=
export TORCH_SPEC PYTHON VENV DETECTRON2_SRC

# The built-in ablation: every preset variant (Faster R-CNN, Libra R-CNN, each Libra component
# alone, RetinaNet, Libra RetinaNet) x seeds 42, 1, 2 (the README's seeds), two runs at a
# time, on the built-in recipe (24 runs of ~15 min, two at a time: about 3 hours on a 2-core
# CPU). ABLATION_OPTS is passed to every run (e.g. a shorter SOLVER.MAX_ITER or
# MODEL.DEVICE cuda). Results: $(ABLATION_OUT)/ablation.{json,md}. The other heads:
# ABLATION_ARGS="--preset builtin-heads --seeds 42 1 2 --jobs 2" (the Fast R-CNN pair needs
# proposal files first, see tools/dump_proposals.py).
ABLATION_OUT ?= output/ablation_builtin
ABLATION_ARGS ?= --preset builtin --seeds 42 1 2 --jobs 2
ABLATION_OPTS ?=

.PHONY: setup demo test test-long lint bench ablation gpu-prepare gpu-dry-run clean

setup:
	@bash dev/env/setup_env.sh

demo: setup
	$(PY) tools/run_demo.py --config-file $(DEMO_CONFIG) --output-dir $(DEMO_OUT) $(DEMO_ARGS) $(DEMO_OPTS)

# TEST_WORKERS: pytest-xdist processes (each gets cores/TEST_WORKERS threads; 1: no xdist)
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist worksteal) $(PYTEST_ARGS)

# the long checks left out of `make test` (marker opt_in: torch.export / AOTInductor / TorchScript
# combinations, a second kill-and-resume pipeline); AOTInductor compiles take minutes each
test-long: setup
	$(PY) -m pytest -q -m opt_in $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS)) $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check libra_d2 tests tools dev train_net.py

ablation: setup
	$(PY) dev/ablate.py $(ABLATION_ARGS) -o $(ABLATION_OUT) $(if $(strip $(ABLATION_OPTS)),-- $(ABLATION_OPTS))

bench: setup
	$(PY) dev/bench/run_all.py $(BENCH_ARGS)

# the GPU check (docs/compatibility.md): prepare the carried folder here (network), prove the
# script on CPU in a throw-away environment from that folder alone
gpu-prepare:
	bash dev/gpu/gpu_prepare.sh gpu_carry

gpu-dry-run:
	bash dev/gpu/gpu_dry_run.sh

clean:
	rm -rf output build *.egg-info
