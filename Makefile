# handoffd — see README.md. Run `make test` and `make demo` as root: they
# load eBPF programs and attach them to sockets.

GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
# EXTRA_LDFLAGS: make deb passes -s -w (no symbol table, no DWARF).
LDFLAGS := -X main.version=$(VERSION) \
	-X github.com/handoffd/handoffd/internal/cliapp.Version=$(VERSION) \
	-X github.com/handoffd/handoffd/internal/cliapp.Commit=$(COMMIT) $(EXTRA_LDFLAGS)
BINS    := bin/handoffd bin/handoffctl bin/demo bin/grpcdemo

# make install: PREFIX and DESTDIR as usual; the config and the unit go
# where systemd and handoffd look for them.
PREFIX     ?= /usr/local
DESTDIR    ?=
BINDIR     ?= $(PREFIX)/bin
SBINDIR    ?= $(PREFIX)/sbin
MANDIR     ?= $(PREFIX)/share/man
DOCDIR     ?= $(PREFIX)/share/doc/handoffd
DATADIR    ?= $(PREFIX)/share/handoffd
SYSCONFDIR ?= /etc
UNITDIR    ?= $(PREFIX)/lib/systemd/system
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR ?= $(PREFIX)/share/zsh/site-functions

.PHONY: all build demo test unit e2e fuzz soak generate check-generated lint clean bench bench-quick e2e-race \
	bench-deps install deb deb-deps test-vm docs test-fleet fleet-deps

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/ ./cmd/handoffd ./cmd/handoffctl ./demo ./demo/grpcdemo

# handoffd with the Gin demo on 127.0.0.1:8080; Ctrl-C stops both.
demo: build
	./bin/handoffd --config demo/handoff.yaml

# Unit tests (no root needed), then the end-to-end tests (root, real
# kernel) on race-built binaries. Both builds in a row would take CI past
# 30 minutes; make e2e runs the plain build.
test: lint unit e2e-race

unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /test$$)
	cd test/bench && $(GO) test -count=1 ./...

e2e: build
	$(GO) test -count=1 -v -timeout 20m ./test/

# Boots Debian's kernels 5.10, 6.1 and 6.12 under qemu (TCG, no /dev/kvm
# needed), one after another: the ebpf suite on 6.1 and 6.12, the fdpass suite
# and mode auto's fallback on 5.10, the systemd unit on 6.1; see
# test/vm/run.sh (VM_KERNELS=6.1 for one). Installs qemu and the kernel
# packages from Debian.
test-vm: deb
	bash test/vm/run.sh

# The Ansible collection in deploy/ansible rolls releases across three
# hosts simulated here (network namespaces, each with its own sshd and
# handoffd) under load: see test/fleet_test.go. Installs Debian's
# ansible-core and openssh-server.
fleet-deps:
	@command -v ansible-playbook >/dev/null && test -x /usr/sbin/sshd || { echo "installing ansible-core and openssh-server from Debian"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
		--no-install-recommends ansible-core openssh-server >/dev/null; }

test-fleet: fleet-deps deb
	cd deploy/ansible/tests && /usr/bin/python3 -m unittest -v
	HANDOFF_DEB=$$(ls -t $(CURDIR)/dist/handoffd_*.deb | head -n 1) HANDOFF_FLEET_OUT=$(CURDIR)/bin/test-fleet \
		$(GO) test -tags fleet -count=1 -v -timeout 40m -run '^TestFleet$$' ./test/

# Binaries, man pages (handoffd(8), handoffctl(8), and handoff.yaml(5) from
# the config's reference), shell completion and the guide (README.md,
# SECURITY.md, docs/*.md, as laid out in the repository, so that their links
# hold), the Prometheus alerting rules and the Grafana dashboard
# (share/handoffd) into $(DESTDIR)$(PREFIX); the unit, and the example
# config as $(SYSCONFDIR)/handoff/handoff.yaml.example.
install: build
	install -d bin/doc
	for p in handoffd handoffctl; do \
		./bin/$$p man >bin/doc/$$p.8 && \
		./bin/$$p completion bash >bin/doc/$$p.bash && \
		./bin/$$p completion zsh >bin/doc/_$$p || exit 1; \
	done
	./bin/handoffd config-reference man >bin/doc/handoff.yaml.5
	sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' \
		packaging/handoffd.service.in >bin/doc/handoffd.service
	install -D -m 0755 bin/handoffd $(DESTDIR)$(SBINDIR)/handoffd
	install -D -m 0755 bin/handoffctl $(DESTDIR)$(BINDIR)/handoffctl
	install -D -m 0644 bin/doc/handoffd.8 $(DESTDIR)$(MANDIR)/man8/handoffd.8
	install -D -m 0644 bin/doc/handoffctl.8 $(DESTDIR)$(MANDIR)/man8/handoffctl.8
	install -D -m 0644 bin/doc/handoff.yaml.5 $(DESTDIR)$(MANDIR)/man5/handoff.yaml.5
	install -D -m 0644 bin/doc/handoffd.bash $(DESTDIR)$(BASHCOMPDIR)/handoffd
	install -D -m 0644 bin/doc/handoffctl.bash $(DESTDIR)$(BASHCOMPDIR)/handoffctl
	install -D -m 0644 bin/doc/_handoffd $(DESTDIR)$(ZSHCOMPDIR)/_handoffd
	install -D -m 0644 bin/doc/_handoffctl $(DESTDIR)$(ZSHCOMPDIR)/_handoffctl
	install -D -m 0644 bin/doc/handoffd.service $(DESTDIR)$(UNITDIR)/handoffd.service
	install -D -m 0644 packaging/handoff.yaml $(DESTDIR)$(SYSCONFDIR)/handoff/handoff.yaml.example
	install -D -m 0644 -t $(DESTDIR)$(DOCDIR) README.md SECURITY.md
	install -D -m 0644 -t $(DESTDIR)$(DOCDIR)/docs docs/*.md
	install -D -m 0644 observe/alerts.yml $(DESTDIR)$(DATADIR)/alerts.yml
	install -D -m 0644 observe/dashboard.json $(DESTDIR)$(DATADIR)/dashboard.json

# Rewrites the keys of docs/configuration.md from the config's reference
# (internal/config/reference.go); the unit tests fail until it is run.
docs:
	$(GO) test -count=1 -run '^TestConfigurationDoc$$' ./internal/config -update

# A Debian package of what make install installs, into dist/, checked by
# Debian's lintian: an error fails it.
deb: deb-deps
	bash packaging/deb.sh $(VERSION) $(COMMIT)

deb-deps:
	@command -v lintian >/dev/null || { echo "installing lintian from Debian"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends lintian >/dev/null; }

# handoffd, handoffctl and the demo built with -race; a race report from
# any of them fails the test that was running. About 3x the time of e2e
# (here 7.5 min plain, over 20 min race-built).
e2e-race:
	HANDOFF_RACE=1 $(GO) test -count=1 -v -timeout 40m ./test/

# Each fuzz target from its seed corpus in testdata/fuzz, for a count of
# inputs that takes about 10 s here. A count, not a time: with
# -fuzztime=10s, Go 1.26's fuzz coordinator may fail a target with
# "context deadline exceeded" as the time ends, having found nothing
# (golang/go#75804, fixed in Go 1.27).
FUZZ := FuzzLifecycle@./internal/lifecycle@80 FuzzParseConfig@./internal/config@100000 \
	FuzzAPIRequest@./internal/control@15000 FuzzNotifyMessage@./internal/host@200000
fuzz:
	@for t in $(FUZZ); do \
		name=$${t%%@*}; rest=$${t#*@}; pkg=$${rest%@*}; count=$${rest#*@}; \
		$(GO) test -run='^$$' -fuzz="^$$name\$$" -fuzztime=$${count}x $$pkg || exit 1; \
	done

# Bad days one after another under load (swaps, canaries, kill -9 of
# generations and of handoffd, config reloads), half the time in ebpf mode
# and half in fdpass mode, for HANDOFF_SOAK (default 10m; the long run is
# HANDOFF_SOAK=1h make soak). Root; not part of make test.
HANDOFF_SOAK ?= 10m
soak: build
	HANDOFF_SOAK=$(HANDOFF_SOAK) $(GO) test -tags soak -count=1 -v -timeout 3h -run '^TestSoak$$' ./test/

# Regenerate the eBPF objects and their Go bindings from bpf/*.c.
generate:
	@command -v clang >/dev/null && command -v llvm-strip >/dev/null && test -f /usr/include/bpf/bpf_helpers.h || { \
		echo "installing clang, llvm and libbpf-dev from Debian"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang llvm libbpf-dev; }
	$(GO) generate ./bpf/

# Fails when the committed objects differ from what their sources compile to.
check-generated: generate
	@git diff --exit-code --stat -- bpf/ || { echo "bpf/: committed objects differ from their sources: run make generate and commit"; exit 1; }

# handoffd against its peers, side by side, then how handoffd's costs grow
# (root; test/bench is its own module). bench: 100 swaps per row, ~45 min;
# bench-quick: 3 swaps, small sizes, every part of the growth in both modes, < 10 min.
# The HAProxy row needs Debian's haproxy.
bench-deps:
	@command -v haproxy >/dev/null || { echo "installing haproxy from Debian"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null; }

bench: bench-deps
	cd test/bench && timeout 75m $(GO) run . -swaps 100 -cost-rounds 10 -cost-each 1s -cost-max 3m -out .

bench-quick: bench-deps
	cd test/bench && timeout 10m $(GO) run . -swaps 3 -steady 1s -cost-each 1s -cost-rounds 3 -cost-max 10s \
		-growth-conns 0,1000,max -growth-max 2000 -growth-repeats 1 -growth-modes ebpf,fdpass \
		-growth-fleet 5x4 -growth-fleet-conns 0,1000 -growth-services 1,10 -growth-listeners 1 \
		-growth-rest 1s -out out/quick

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfel\.go$$')); \
		if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags vm ./test/
	$(GO) vet -tags fleet ./test/
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy and commit"; exit 1; }

clean:
	rm -rf bin dist
