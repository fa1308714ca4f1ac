# gpupool — every target installs what it needs: the virtualenv and Python packages, and the
# Kubernetes test binaries (built from Go modules into ~/.cache/gpupool, never into the repo).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OPENB  ?= ../shared/data/openb
OUT    ?= out

.PHONY: setup e2e-bin runtime test unit lint fuzz bench demo demo-down simulate clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# kube-apiserver, kube-scheduler, kube-controller-manager, kubectl, etcd, kwok, helm (skips what is built)
e2e-bin:
	bash e2e/build.sh

# the pooling runtime (runtime/libgpupool.so), its sanitizer build, the fake CUDA driver and test program (gcc, make)
runtime:
	$(MAKE) -C runtime check

# ruff, mypy (strict) over every package, and the import contracts of pyproject's [tool.importlinter]
lint: setup
	$(VENV)/bin/ruff check gpupool kubeio extender controller deviceplugin e2e tests bench
	$(PY) -c "import deviceplugin.api"  # generates the gRPC stubs mypy reads
	$(VENV)/bin/mypy gpupool kubeio extender controller deviceplugin
	$(VENV)/bin/lint-imports

unit: setup
	$(VENV)/bin/pytest tests/unit -q

test: setup e2e-bin runtime
	$(VENV)/bin/pytest -q -p no:cacheprovider

# the input fuzzers of tests/fuzz and the extender's interleaving harness at length (`make test` runs a few
# dozen examples per surface and 2,000 schedules); a failing schedule names its seed: GPUPOOL_INTERLEAVING_SEED=<n>
FUZZ_EXAMPLES ?= 5000
FUZZ_SCHEDULES ?= 5000
fuzz: setup
	GPUPOOL_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/pytest tests/fuzz -q -p no:cacheprovider -o timeout=0
	GPUPOOL_INTERLEAVING_FIRST=2000 GPUPOOL_INTERLEAVING_SEEDS=$(FUZZ_SCHEDULES) GPUPOOL_INTERLEAVING_STEPS=100 \
	  $(VENV)/bin/pytest tests/extender/test_interleavings.py -q -p no:cacheprovider -o timeout=0

# the main job: a local cluster with fake GPUs, gpupool installed, sample workloads, the pool shown
demo: setup e2e-bin
	$(PY) -m e2e.demo up

demo-down: setup
	$(PY) -m e2e.demo down

simulate: setup
	mkdir -p $(OUT)
	$(VENV)/bin/gpupool simulate --pods $(OPENB)/openb_pod_list_default.csv \
	  --nodes $(OPENB)/openb_node_list_gpu_node.csv --policy fgd,fgdpp,bestfit --seeds 3 --jobs 2 \
	  --json $(OUT)/openb.json --plot $(OUT)/openb.png

bench: setup e2e-bin
	mkdir -p $(OUT)
	$(PY) bench/openb.py --seeds 10 --jobs 2 --json $(OUT)/openb.json
	$(PY) bench/extender_latency.py --nodes 1000 --json $(OUT)/extender-1000.json
	$(PY) bench/extender_latency.py --nodes 5000 --json $(OUT)/extender-5000.json
	$(PY) bench/extender_latency.py --nodes 5000 --names-per-call scheduler --cycle 300 --json $(OUT)/extender-http-5000.json
	$(PY) bench/allocate_latency.py --pods 100 --api none
	$(PY) bench/allocate_latency.py --pods 100 --json > $(OUT)/allocate.json
	$(PY) bench/admission_throughput.py --json > $(OUT)/admission.json
	$(PY) bench/webhook_latency.py --json $(OUT)/webhook.json
	$(PY) bench/gpunode_status_write.py --rounds 3 --json $(OUT)/gpunode-status-write.json
	$(PY) bench/e2e_throughput.py --nodes 100 --pods 200 --json $(OUT)/e2e-100.json
	$(PY) bench/e2e_throughput.py --nodes 1000 --pods 1000 --json $(OUT)/e2e-1000.json
	$(MAKE) -C runtime test-bin
	$(PY) bench/runtime_overhead.py --json $(OUT)/runtime.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache $(OUT)
	$(MAKE) -C runtime clean
