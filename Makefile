# crpipe — checkpoint/restore of Linux processes as a pipeline of small tools.
#
#   make            build every cmd/* into bin/ (Go alone) and the C test
#                   programs into bin/test/ (when gcc is there)
#   make test       install what the tests need, build, run all tests (root)
#   make demo       checkpoint and restore a counting process, step by step
#   make bench      dump/restore throughput against the machine's limits
#   make fuzz       short runs of every fuzz target (FUZZTIME=10s each)
#   make generate   regenerate lib/pb/*.pb.go from lib/pb/*.proto
#   make pie        rebuild the restorer blob (pie/, needs gcc)

SHELL := bash
.SHELLFLAGS := -o pipefail -ec

GO ?= go
# make's built-in default is cc; the test programs are written for gcc.
ifeq ($(origin CC),default)
CC := gcc
endif
BIN ?= bin
# The C test programs; the e2e tests build them into their own directory
# with `make progs TESTBIN=...`, so these rules are the only recipe.
TESTBIN ?= $(BIN)/test
PROG_CFLAGS ?= -O2 -g -Wall -Wextra -Werror -pthread
TEST_TIMEOUT ?= 20m
FUZZTIME ?= 10s
BENCH_FLAGS ?=
GOBUILDFLAGS ?=

PROG_SRCS := $(wildcard test/progs/*.c)
PROGS := $(patsubst test/progs/%.c,$(TESTBIN)/%,$(PROG_SRCS)) $(TESTBIN)/counter-static
HAVE_CC := $(shell command -v $(CC) 2>/dev/null)
CMDS := $(patsubst %/,%,$(dir $(wildcard cmd/*/*.go)))

.PHONY: all build progs pie generate deps test bench demo fuzz clean check-root

all: build progs

build:
ifeq ($(CMDS),)
	@echo "make: no commands under cmd/ yet"
else
	@mkdir -p $(BIN)
	$(GO) build $(GOBUILDFLAGS) -o $(BIN)/ $(addprefix ./,$(sort $(CMDS)))
endif

ifeq ($(HAVE_CC),)
progs:
	@echo "make: $(CC) not found; skipping the C test programs (make test installs it)"
else
progs: $(PROGS)
endif

$(TESTBIN)/%: test/progs/%.c $(wildcard test/progs/*.h)
	@mkdir -p $(@D)
	$(CC) $(PROG_CFLAGS) -o $@ $<

$(TESTBIN)/%-static: test/progs/%.c $(wildcard test/progs/*.h)
	@mkdir -p $(@D)
	$(CC) $(PROG_CFLAGS) -static -o $@ $<

# The restorer blob is committed; this rebuilds it (owned by pie/Makefile).
pie:
	$(MAKE) -C pie

generate:
	@scripts/deps.sh generate
	scripts/pbgen.sh lib/pb

deps:
	@scripts/deps.sh test

check-root:
	@if [ "$$(id -u)" != 0 ]; then \
		echo "make: the tests freeze, ptrace and restore real processes: run make test as root"; exit 1; fi

# go test runs with -json into test/out/ and test/testsum prints the usual
# per-package lines, the output of failed tests, every skip with its reason,
# and one summary line; it fails when any test or build failed.
test: check-root deps
	@$(GO) mod download
	@$(MAKE) --no-print-directory all
	@mkdir -p test/out
	@echo "go test -count=1 -timeout $(TEST_TIMEOUT) ./..."
	@$(GO) build -o test/out/testsum ./test/testsum
	@$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -json ./... 2>&1 | tee test/out/go-test.json | test/out/testsum

bench: check-root deps all
	$(GO) run ./bench -bin $(BIN) $(BENCH_FLAGS)

demo: check-root all
	@scripts/demo.sh $(BIN)

fuzz:
	@FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

clean:
	rm -rf $(BIN) test/out bench/tmp
