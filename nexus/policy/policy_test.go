package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/skylane/skylane/packet"
)

// testNames resolves a fixed set of names, so the tests do not depend on
// the machine's /etc/passwd.
var testNames = Resolver{
	User: func(n string) (uint32, error) {
		switch n {
		case "web":
			return 1001, nil
		case "prometheus":
			return 1003, nil
		}
		return 0, fmt.Errorf("unknown user %q", n)
	},
	Group: func(n string) (uint32, error) {
		if n == "skylane" {
			return 2000, nil
		}
		return 0, fmt.Errorf("unknown group %q", n)
	},
}

const example = `# the shape the docs use
[[allow]]
uid = 65534
tcp = ["8080", "9000-9099"]
udp = ["5353"]
addrs = ["198.18.0.1"]
max_flows = 10000
max_pool = "64MiB"
rate = "1Gbit"
dial = true
dial_to = ["198.18.0.0/15"]
observe = false

[[allow]]   # a user's web server
user = "web"
tcp = ["80", 443]
dial = true

[[allow]]
group = "skylane"
udp = ["6000-6999"]
observe = true
`

func TestParseExample(t *testing.T) {
	p, err := Parse("example.toml", []byte(example), testNames)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Rules) != 3 {
		t.Fatalf("%d rules, want 3", len(p.Rules))
	}
	r := p.Rules[0]
	if r.N != 1 || r.Line != 2 || r.Selects() != "uid 65534" {
		t.Errorf("rule 1: N %d line %d selects %q", r.N, r.Line, r.Selects())
	}
	if fmt.Sprint(r.TCP) != "[8080 9000-9099]" || fmt.Sprint(r.UDP) != "[5353]" {
		t.Errorf("rule 1 ports: tcp %v udp %v", r.TCP, r.UDP)
	}
	if r.MaxFlows != 10000 || r.MaxPool != 64<<20 || r.Rate != 1e9 || !r.Dial || r.Observe {
		t.Errorf("rule 1 limits: %+v", r)
	}
	if fmt.Sprint(r.Addrs) != "[198.18.0.1]" || fmt.Sprint(r.DialTo) != "[198.18.0.0/15]" {
		t.Errorf("rule 1 addrs %v dial_to %v", r.Addrs, r.DialTo)
	}
	if r := p.Rules[1]; r.Line != 14 || r.Selects() != "user web (uid 1001)" || fmt.Sprint(r.TCP) != "[80 443]" || r.Addrs != nil {
		t.Errorf("rule 2: line %d %q tcp %v addrs %v", r.Line, r.Selects(), r.TCP, r.Addrs)
	}
	if r := p.Rules[2]; r.Line != 19 || r.Selects() != "group skylane (gid 2000)" || !r.Observe || r.MaxFlows != 0 {
		t.Errorf("rule 3: line %d %q %+v", r.Line, r.Selects(), r)
	}
}

// TestParseErrors: every mistake is an error naming the line, and the key
// or rule.
func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      []string // substrings of the error
	}{
		{"unknown key", "[[allow]]\nuid = 1\nports = [\"80\"]\n", []string{"line 3", `"allow.ports"`}},
		{"key in other case", "[[allow]]\nUID = 1\n", []string{"line 2", "unknown key"}},
		{"unknown table", "[allows]\nuid = 1\n", []string{"line 1", `"allows"`}},
		{"no selector", "[[allow]]\ntcp = [\"80\"]\n", []string{"rule 1 (line 1)", "exactly one"}},
		{"two selectors", "[[allow]]\nuid = 1\ngid = 2\n", []string{"rule 1", "has 2 of"}},
		{"bad range", "[[allow]]\nuid = 1\ntcp = [\"90-80\"]\n", []string{"line 3", "ends before it starts"}},
		{"port 0", "[[allow]]\nuid = 1\nudp = [\"0\"]\n", []string{"line 3", "not a port"}},
		{"port too big", "[[allow]]\nuid = 1\ntcp = [\"65536\"]\n", []string{"line 3", "not a port"}},
		{"bad size", "[[allow]]\nuid = 1\nmax_pool = \"64 furlongs\"\n", []string{"line 3", "size"}},
		{"zero size", "[[allow]]\nuid = 1\nmax_pool = 0\n", []string{"line 3", "positive"}},
		{"bad rate", "[[allow]]\nuid = 1\nrate = \"1Gbps\"\n", []string{"line 3", "rate"}},
		{"bad addr", "[[allow]]\nuid = 1\naddrs = [\"198.18.0\"]\n", []string{"line 3"}},
		{"multicast addr", "[[allow]]\nuid = 1\naddrs = [\"224.0.0.1\"]\n", []string{"rule 1", "unicast"}},
		{"bad prefix", "[[allow]]\nuid = 1\ndial = true\ndial_to = [\"198.18.0.0/33\"]\n", []string{"line 4"}},
		{"dial_to without dial", "[[allow]]\nuid = 1\ndial_to = [\"198.18.0.0/15\"]\n", []string{"rule 1", "dial = true"}},
		{"negative uid", "[[allow]]\nuid = -1\n", []string{"rule 1", "not a valid id"}},
		{"max_flows 0", "[[allow]]\nuid = 1\nmax_flows = 0\n", []string{"rule 1", "max_flows"}},
		{"unknown user", "[[allow]]\nuser = \"nobody-here\"\n", []string{"rule 1", "nobody-here"}},
		{"wrong type", "[[allow]]\nuid = \"1\"\n", []string{"line 2"}},
		{"second rule", "[[allow]]\nuid = 1\n\n[[allow]]\ngid = 1\nmax_flows = -3\n", []string{"rule 2 (line 4)"}},
		{"syntax", "[[allow]\nuid = 1\n", []string{"line 2", "delimiter"}}, // the lexer counts the newline it choked on
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("p.toml", []byte(tc.src), testNames)
			if err == nil {
				t.Fatal("parsed")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// TestExampleFile: the example policy in deploy/ parses and means what
// its comments say.
func TestExampleFile(t *testing.T) {
	b, err := os.ReadFile("../../deploy/policy.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse("policy.example.toml", b, testNames)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Rules) != 3 {
		t.Fatalf("%d rules, want 3", len(p.Rules))
	}
	web, _ := p.Grant(Cred{UID: 1001, GID: 2000})
	if web.Rule() != p.Rules[0] || web.Listen(packet.ProtoTCP, netip.MustParseAddr("198.18.0.1"), 443) != nil ||
		web.MaxPool() != 64<<20 || web.Rate() != 1e9 || web.Observe() == nil {
		t.Errorf("web: %s", web.Describe())
	}
	prom, _ := p.Grant(Cred{UID: 1003, GID: 1003})
	if prom.Observe() != nil || prom.Listen(packet.ProtoTCP, netip.Addr{}, 9000) == nil {
		t.Errorf("prometheus: %s", prom.Describe())
	}
	member, _ := p.Grant(Cred{UID: 1500, GID: 1500, Groups: []uint32{2000}})
	if member.Listen(packet.ProtoUDP, netip.Addr{}, 6001) != nil || member.Dial(packet.ProtoTCP, netip.Addr{}, netip.MustParseAddr("198.18.0.9")) == nil {
		t.Errorf("group member: %s", member.Describe())
	}
}

func TestRootOnly(t *testing.T) {
	p := RootOnly()
	g, err := p.Grant(Cred{UID: 0, GID: 0, PID: 1})
	if err != nil || !g.Root() {
		t.Fatalf("root: %v", err)
	}
	if err := g.Listen(packet.ProtoTCP, netip.Addr{}, 80); err != nil {
		t.Errorf("root refused: %v", err)
	}
	_, err = p.Grant(Cred{UID: 1000, GID: 1000})
	if !errors.Is(err, ErrNotPermitted) || !strings.Contains(err.Error(), "only root") {
		t.Errorf("uid 1000 without a policy: %v", err)
	}
}

func TestGrantChecks(t *testing.T) {
	p, err := Parse("example.toml", []byte(example), testNames)
	if err != nil {
		t.Fatal(err)
	}
	a1 := netip.MustParseAddr("198.18.0.1")
	a2 := netip.MustParseAddr("198.18.0.2")
	far := netip.MustParseAddr("203.0.113.9")
	const tcp, udp = packet.ProtoTCP, packet.ProtoUDP
	nobody := Cred{UID: 65534, GID: 65534, PID: 7}
	web := Cred{UID: 1001, GID: 100}
	member := Cred{UID: 1002, GID: 100, Groups: []uint32{2000}}

	for _, tc := range []struct {
		name  string
		who   Cred
		check func(g *Grant) error
		want  string // "" allowed, else a substring of the refusal
	}{
		{"listen in range", nobody, func(g *Grant) error { return g.Listen(tcp, a1, 9050) }, ""},
		{"listen other port", nobody, func(g *Grant) error { return g.Listen(tcp, a1, 9100) }, "tcp ports are 8080, 9000-9099"},
		{"privileged port, other rule allows", nobody, func(g *Grant) error { return g.Listen(tcp, a1, 80) }, "rule 2 (example.toml:14, user web (uid 1001)) would allow it"},
		{"udp port on tcp list", nobody, func(g *Grant) error { return g.Listen(udp, a1, 8080) }, "udp ports are 5353"},
		{"other address", nobody, func(g *Grant) error { return g.Listen(tcp, a2, 8080) }, "addresses are [198.18.0.1]"},
		{"every address under addrs", nobody, func(g *Grant) error { return g.Listen(tcp, netip.Addr{}, 8080) }, "not every address"},
		{"dial in prefix", nobody, func(g *Grant) error { return g.Dial(tcp, a1, a2) }, ""},
		{"dial out of prefix", nobody, func(g *Grant) error { return g.Dial(tcp, a1, far) }, "dial_to is [198.18.0.0/15]"},
		{"flows under limit", nobody, func(g *Grant) error { return g.Flows(9999) }, ""},
		{"flows at limit", nobody, func(g *Grant) error { return g.Flows(10000) }, "max_flows is 10000"},
		{"observe refused", nobody, func(g *Grant) error { return g.Observe() }, "rule 3 (example.toml:19, group skylane (gid 2000)) would allow it"},
		{"web any address", web, func(g *Grant) error { return g.Listen(tcp, netip.Addr{}, 443) }, ""},
		{"web dial anywhere", web, func(g *Grant) error { return g.Dial(udp, a2, far) }, ""},
		{"web no udp", web, func(g *Grant) error { return g.Listen(udp, a1, 5353) }, "rule 1 (example.toml:2, uid 65534) would allow it"},
		{"group member", member, func(g *Grant) error { return g.Listen(udp, a2, 6500) }, ""},
		{"group no dial", member, func(g *Grant) error { return g.Dial(tcp, a2, a1) }, "no dial = true"},
		{"group observe", member, func(g *Grant) error { return g.Observe() }, ""},
		{"nobody allows icmp", member, func(g *Grant) error { return g.Listen(1, a2, 1) }, "no rule allows it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := p.Grant(tc.who)
			if err != nil {
				t.Fatal(err)
			}
			err = tc.check(g)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrNotPermitted) {
				t.Fatalf("err %v, want a refusal", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("refusal %q does not say %q", err, tc.want)
			}
		})
	}

	// First match governs: uid 65534 in group skylane still gets rule 1.
	g, err := p.Grant(Cred{UID: 65534, GID: 2000})
	if err != nil || g.Rule() != p.Rules[0] {
		t.Errorf("uid 65534 in group skylane: %v, rule %v; want rule 1", err, g.Describe())
	}
	_, err = p.Grant(Cred{UID: 42, GID: 42})
	if !errors.Is(err, ErrNotPermitted) || !strings.Contains(err.Error(), "uid = 42") {
		t.Errorf("unmatched uid: %v", err)
	}
}
