package client_test

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// appSide are the only Skylane packages an app may link: the shared
// contract (shm, pool, ring, channel, packet, flow, control) and its stack.
var appSide = []string{
	"internal/shm", "pool", "ring", "channel", "packet", "flow", "control", "stack", "client",
}

// nexusSide are packages an app must never link, named so that a failure
// says which line was crossed; anything else outside appSide fails too.
var nexusSide = []string{
	"github.com/skylane/skylane/flowswitch", "github.com/skylane/skylane/nexus",
	"github.com/skylane/skylane/regulate", "github.com/skylane/skylane/neigh",
	"github.com/skylane/skylane/netif", "github.com/cilium/ebpf",
	"github.com/vishvananda/", "github.com/prometheus/",
}

const module = "github.com/skylane/skylane/"

func goTool(t *testing.T) string {
	t.Helper()
	g, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to check the app's dependencies: %v", err)
	}
	return g
}

// checkAppDeps fails for every package of pkgs outside the app side.
func checkAppDeps(t *testing.T, what string, pkgs []string) {
	t.Helper()
	for _, p := range pkgs {
		for _, bad := range nexusSide {
			if p == bad || strings.HasPrefix(p, bad+"/") || (strings.HasSuffix(bad, "/") && strings.HasPrefix(p, bad)) {
				t.Errorf("%s links %s, which is the nexus side", what, p)
			}
		}
		if rest, ok := strings.CutPrefix(p, module); ok && !slices.Contains(appSide, rest) && !strings.HasPrefix(rest, "examples/") {
			t.Errorf("%s links %s, which is not part of the app's contract %v", what, p, appSide)
		}
	}
}

// TestDeps holds the trust boundary in the imports: package client, and a
// program that imports only client (examples/httpecho), depend on the
// shared contract and gVisor, never on the nexus side; and the binary
// built from that program contains no symbol of it.
func TestDeps(t *testing.T) {
	g := goTool(t)
	for _, pkg := range []string{".", "../examples/httpecho"} {
		out, err := exec.Command(g, "list", "-deps", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		deps := strings.Fields(string(out))
		if !slices.Contains(deps, module+"client") || !slices.Contains(deps, module+"stack") {
			t.Fatalf("go list -deps %s: no client or stack in %d packages: not the list expected", pkg, len(deps))
		}
		checkAppDeps(t, pkg, deps)
	}

	bin := filepath.Join(t.TempDir(), "httpecho")
	if out, err := exec.Command(g, "build", "-o", bin, "../examples/httpecho").CombinedOutput(); err != nil {
		t.Fatalf("build examples/httpecho: %v\n%s", err, out)
	}
	out, err := exec.Command(g, "tool", "nm", bin).CombinedOutput()
	if err != nil {
		t.Fatalf("go tool nm: %v\n%s", err, out)
	}
	// Symbols are named by their package's import path.
	re := regexp.MustCompile(`github\.com/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(/[a-z0-9_]+)*`)
	seen := map[string]bool{}
	for _, m := range re.FindAllString(string(out), -1) {
		seen[m] = true
	}
	if !seen[module+"client"] {
		t.Fatalf("no symbol of %sclient in the binary: the symbol scan is broken", module)
	}
	var pkgs []string
	for p := range seen {
		if strings.HasPrefix(p, "github.com/skylane/") || strings.HasPrefix(p, "github.com/cilium/") || strings.HasPrefix(p, "github.com/vishvananda/") || strings.HasPrefix(p, "github.com/prometheus/") {
			pkgs = append(pkgs, p)
		}
	}
	slices.Sort(pkgs)
	checkAppDeps(t, "the httpecho binary", pkgs)
	t.Logf("the binary holds symbols of %v", pkgs)
}
