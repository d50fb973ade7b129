package policy

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/skylane/skylane/internal/fuzzbytes"
)

// FuzzParse: any text parses or fails with an error, never a panic; a
// policy that parses satisfies the invariants the checks rely on.
func FuzzParse(f *testing.F) {
	f.Add([]byte(example))
	f.Add([]byte("[[allow]]\nuid = 1\ntcp = [\"1-65535\"]\nmax_pool = \"1TiB\"\nrate = 9223372036854775807\n"))
	f.Add([]byte("[[allow]]\ngid = 4294967294\naddrs = [\"::ffff:198.18.0.1\", \"2001:db8::1\"]\n"))
	f.Add([]byte("allow = [{uid = 3, tcp = [\"80\"]}]\n"))
	f.Add([]byte("[[allow]]\nuid = 1\n[allow.x]\n"))
	f.Fuzz(func(t *testing.T, src []byte) {
		p, err := Parse("fuzz.toml", src, testNames)
		if err != nil {
			return
		}
		for i, r := range p.Rules {
			if r.N != i+1 {
				t.Fatalf("rule %d numbered %d", i+1, r.N)
			}
			for _, pr := range append(append([]PortRange(nil), r.TCP...), r.UDP...) {
				if pr.Lo == 0 || pr.Hi < pr.Lo {
					t.Fatalf("rule %d: port range %v", r.N, pr)
				}
			}
			if r.MaxFlows < 0 || r.MaxFlows > MaxFlowsLimit || r.MaxPool < 0 || r.Rate < 0 {
				t.Fatalf("rule %d: limits %+v", r.N, r)
			}
			if r.DialTo != nil && !r.Dial {
				t.Fatalf("rule %d: dial_to without dial", r.N)
			}
			for _, a := range r.Addrs {
				if !a.IsGlobalUnicast() || a.Is4In6() {
					t.Fatalf("rule %d: address %v", r.N, a)
				}
			}
		}
	})
}

// FuzzChecks: any credentials and request against the example policy get
// nil or a refusal wrapping ErrNotPermitted, never a panic; uid 0 is never
// refused, and a refusal is the governing rule's own verdict.
func FuzzChecks(f *testing.F) {
	p, err := Parse("example.toml", []byte(example), testNames)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte{0xfe, 0xff, 0, 0, 0, 6, 0x1f, 0x90, 198, 18, 0, 1})
	f.Add([]byte{0xe9, 0x03, 0, 0, 1, 17, 0, 80, 0, 0, 0, 0})
	f.Add([]byte{0, 0, 0, 0, 2, 6, 0, 0, 203, 0, 113, 9})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := fuzzbytes.New(in)
		// uids and gids near the example's rules, so most inputs match one.
		c := Cred{UID: pick(r.Byte(), 0, 65534, 1001, 1002), GID: pick(r.Byte(), 0, 65534, 100, 2000)}
		if r.Byte()&1 == 1 {
			c.Groups = []uint32{2000}
		}
		op, proto := r.Byte()%4, r.Byte()
		port := uint16(r.Byte())<<8 | uint16(r.Byte())
		local := netip.AddrFrom4([4]byte{r.Byte(), r.Byte(), r.Byte(), r.Byte()})
		remote := netip.AddrFrom4([4]byte{r.Byte(), r.Byte(), r.Byte(), r.Byte()})
		if r.Byte()&1 == 1 {
			local = netip.Addr{}
		}
		g, err := p.Grant(c)
		if err != nil {
			if c.UID == 0 || !errors.Is(err, ErrNotPermitted) {
				t.Fatalf("grant %v: %v", c, err)
			}
			return
		}
		var act action
		switch op {
		case 0:
			act, err = listen{proto, local, port}, g.Listen(proto, local, port)
		case 1:
			act, err = dial{proto, local, remote}, g.Dial(proto, local, remote)
		case 2:
			act, err = flows(port), g.Flows(int(port))
		case 3:
			act, err = observe{}, g.Observe()
		}
		if err == nil {
			return
		}
		if g.Root() || !errors.Is(err, ErrNotPermitted) {
			t.Fatalf("%v by %v: %v", act, c, err)
		}
		if ok, _ := act.allowedBy(g.Rule()); ok {
			t.Fatalf("%v refused though %s allows it: %v", act, g.Describe(), err)
		}
	})
}

func pick(b byte, ids ...uint32) uint32 {
	if int(b) < len(ids)*50 {
		return ids[int(b)/50]
	}
	return uint32(b)
}
