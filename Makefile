# Skylane: `make test` is the one command CI and a new machine run.
GO        ?= go
PKGS      ?= ./...
# Debian packages the tests use: kernel peers of the privileged driver tests
# (ip, ping, curl, nc, tshark for captures, ethtool for offloads, hping3 for
# floods, nmap for scans, python3-scapy for malformed frames and hostile
# fragments, wrk for the http bench).
APT_PKGS  ?= iproute2 iputils-ping curl netcat-openbsd tshark ethtool hping3 wrk nmap python3-scapy
# Seed corpora of the fuzz targets run as ordinary tests; FUZZTIME>0 also fuzzes.
FUZZTIME  ?= 0

.PHONY: all build test deps vet fuzz bench demo clean soak

all: build

build:
	$(GO) build -o bin/skylane ./cmd/skylane

deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else echo "missing Debian packages:$$missing (run make test as root to install them)"; fi; \
	fi
	$(GO) mod download

vet:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet $(PKGS)

# Under CI a privileged test that skips is a failure (SKYLANE_REQUIRE_PRIV=1).
# The flood targets are about speed, which the race detector takes from the
# user-space stack and not from the flooder: the flood tests run again
# without it (under a minute as root; they skip otherwise).
test: deps vet
	SKYLANE_REQUIRE_PRIV=$${SKYLANE_REQUIRE_PRIV:-$${CI:+1}} $(GO) test -race -count=1 -timeout 20m $(PKGS)
	@if [ "$(PKGS)" = "./..." ]; then set -x; \
		SKYLANE_REQUIRE_PRIV=$${SKYLANE_REQUIRE_PRIV:-$${CI:+1}} $(GO) test -count=1 -timeout 10m -run '^(TestSYNFlood|TestFloods)$$' ./e2e/; fi
	$(GO) build -o bin/skylane ./cmd/skylane
	./bin/skylane bench channel --duration 300ms --rounds 1 --rows slots > /dev/null
	@if [ "$(FUZZTIME)" != 0 ]; then $(MAKE) fuzz; fi

fuzz:
	@for pkg in $$($(GO) list $(PKGS)); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "fuzz $$pkg $$f"; $(GO) test -run XXX -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

# The long loss test: TCP echoes of 32 MiB over memif wires that lose frames
# at random and in bursts (16 seeds x 8 transfers), then over a short queue
# that TCP overfills (4 x 8), every byte checked; fails if any transfer
# stalls. make test runs a short version.
soak:
	SKYLANE_SOAK=1 $(GO) test -count=1 -timeout 60m -run '^TestTCPLossSoak$$' -v ./client/

bench: build
	./bin/skylane bench channel

demo: build
	./bin/skylane demo

clean:
	rm -rf bin
