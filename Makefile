# s2-sam-pipelines: one entry point for set-up, tests and the main job.
#   make test   set up .venv (first time), the Debian packages the tests need, then run
#               lint, type checks and the test suite
#   make run    set up .venv (first time) and run the main job
#   make images build the container images (docker, else podman); REGISTRY=... make push

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= cpu,openvino,export,dev
STAMP  := $(VENV)/.installed-$(EXTRAS)
# pytest-xdist workers for `make test`: much of the suite is single-threaded (torch.export
# tracing, kfp.local subprocesses, servers starting), so two workers use a 2-core CI
# machine's second core; each test file stays on one worker (--dist loadfile), so a
# module's fixtures are built once. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2

# Debian packages the tests need (tools/system_deps.sh installs them, or says how)
DEBIAN_PACKAGES := postgresql postgresql-15-postgis-3 podman buildah runc debootstrap

.PHONY: install sam2 system-deps test lint typecheck unit format run compile clean images push

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	case ",$(EXTRAS)," in *,export,*) $(MAKE) --no-print-directory sam2 ;; esac
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

# sam2 (the [export] extra's SAM 2 reference) is an sdist whose build imports torch:
# build it against this venv's torch (--no-build-isolation; pip's isolated build would
# fetch another torch) and without its optional CUDA extension (SAM2_BUILD_CUDA=0).
# The extra's own `pip install` then finds it installed. Pin: setup.cfg, [export].
SAM2_PIN := $(shell sed -n 's/^ *\(sam2==[0-9.]*\).*/\1/p' setup.cfg)
sam2:
	$(BIN)/python -m pip install --quiet setuptools wheel "torch>=2.2" "torchvision>=0.17"
	SAM2_BUILD_CUDA=0 $(BIN)/python -m pip install --quiet --no-build-isolation "$(SAM2_PIN)"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

system-deps:
	@bash tools/system_deps.sh $(DEBIAN_PACKAGES)

test: system-deps lint typecheck unit

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The main job: auto_segment_s2 over a small farm area, summer 2024, on this machine
# (kfp.local). Exports and registers the official vit_b model on the first run.
run: $(STAMP)
	$(BIN)/s2sam run auto-segment-s2 --geometry examples/farm.geojson \
		--start-date 2024-06-01 --end-date 2024-08-31 --ensure-model \
		--output-dir out/auto_segment_s2

compile: $(STAMP)
	$(BIN)/s2sam compile

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info

# --- container images (images/*.Dockerfile, context: this folder) --------------------
# Tags come from components.images.image(kind): <registry>/s2sam-<kind>:<package version>.
# REGISTRY overrides the registry (compile pipelines with the same S2SAM_IMAGE_REGISTRY).
# PYTHON_BASE (cpu, export) and CUDA_BASE (gpu) override the pinned base images.
CONTAINER_TOOL ?= $(shell if docker info >/dev/null 2>&1; then echo docker; \
	elif command -v podman >/dev/null 2>&1; then echo podman; fi)
CONTAINER_BUILD_FLAGS ?=
IMAGE_KINDS ?= cpu gpu export
REGISTRY ?=
IMAGE_ENV := $(if $(REGISTRY),S2SAM_IMAGE_REGISTRY=$(REGISTRY))
IMAGE_VERSION = $(shell $(PYTHON) -c 'from components.version import __version__; print(__version__)')
image_ref = $(shell $(IMAGE_ENV) $(PYTHON) -c 'from components.images import image; print(image("$(1)"))')
base_arg = $(if $(filter gpu,$(1)),$(if $(CUDA_BASE),--build-arg CUDA_BASE=$(CUDA_BASE)),$(if $(PYTHON_BASE),--build-arg PYTHON_BASE=$(PYTHON_BASE)))

images:
	@test -n "$(CONTAINER_TOOL)" || { echo "make images: neither a docker daemon nor podman found" >&2; exit 1; }
	$(foreach kind,$(IMAGE_KINDS),DOCKER_BUILDKIT=1 $(CONTAINER_TOOL) build $(CONTAINER_BUILD_FLAGS) \
		-f images/$(kind).Dockerfile --build-arg S2SAM_VERSION=$(IMAGE_VERSION) $(call base_arg,$(kind)) \
		-t $(call image_ref,$(kind)) . &&) true

push: images
	$(foreach kind,$(IMAGE_KINDS),$(CONTAINER_TOOL) push $(call image_ref,$(kind)) &&) true
