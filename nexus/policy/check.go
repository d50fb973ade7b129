package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/skylane/skylane/packet"
)

// Cred is who an app is: its control socket's peer credentials
// (SO_PEERCRED, SO_PEERGROUPS), as the kernel reported them when it
// connected.
type Cred struct {
	UID, GID uint32
	PID      int32
	Groups   []uint32 // supplementary groups; may be nil
}

func (c Cred) String() string { return fmt.Sprintf("uid %d gid %d pid %d", c.UID, c.GID, c.PID) }

// Grant is what one app session may do: the rule that governs it (see the
// package doc), fixed when it is made. Immutable; a session whose policy
// is reloaded gets a new Grant (Policy.Grant again).
type Grant struct {
	Cred Cred
	pol  *Policy
	rule *Rule // nil: uid 0, which may do everything
}

// Grant returns what c may do under p, or a refusal if no rule matches
// and c is not uid 0.
func (p *Policy) Grant(c Cred) (*Grant, error) {
	g := &Grant{Cred: c, pol: p}
	if c.UID == 0 {
		return g, nil
	}
	for _, r := range p.Rules {
		if r.Matches(c) {
			g.rule = r
			return g, nil
		}
	}
	why := "no policy file: only root may attach (start the nexus with --policy FILE)"
	if p.Name != "" {
		sel := make([]string, len(p.Rules))
		for i, r := range p.Rules {
			sel[i] = r.Selects()
		}
		why = fmt.Sprintf("no rule of %s matches (its rules are for: %s); add an [[allow]] rule with uid = %d or gid = %d",
			p.Name, strings.Join(sel, "; "), c.UID, c.GID)
		if len(p.Rules) == 0 {
			why = fmt.Sprintf("%s has no rule: add an [[allow]] rule with uid = %d", p.Name, c.UID)
		}
	}
	return nil, &Refusal{Who: c, What: "attach", Why: why}
}

// GrantAll returns a grant that allows c everything, as uid 0 has: for the
// nexus's own user, who could do anything the nexus does anyway.
func (p *Policy) GrantAll(c Cred) *Grant { return &Grant{Cred: c, pol: p} }

// Rule returns the governing rule, nil for uid 0.
func (g *Grant) Rule() *Rule { return g.rule }

// Root reports whether the session may do everything: uid 0's, or a
// GrantAll.
func (g *Grant) Root() bool { return g.rule == nil }

// Describe names the governing rule for logs: "rule 2 (policy.toml:7, uid
// 65534)", or "unrestricted" for uid 0 (and GrantAll).
func (g *Grant) Describe() string {
	if g.rule == nil {
		return "unrestricted"
	}
	return describe(g.pol, g.rule)
}

func describe(p *Policy, r *Rule) string {
	return fmt.Sprintf("rule %d (%s:%d, %s)", r.N, p.Name, r.Line, r.Selects())
}

// MaxFlows, MaxPool and Rate are the governing rule's limits; 0 means
// none.
func (g *Grant) MaxFlows() int {
	if g.rule == nil {
		return 0
	}
	return g.rule.MaxFlows
}

// MaxPool is the largest packet pool, in bytes, the session's port may have.
func (g *Grant) MaxPool() int64 {
	if g.rule == nil {
		return 0
	}
	return g.rule.MaxPool
}

// Rate is the session's transmit cap in bits per second.
func (g *Grant) Rate() int64 {
	if g.rule == nil {
		return 0
	}
	return g.rule.Rate
}

// action is one request, checked against one rule.
type action interface {
	allowedBy(r *Rule) (ok bool, why string)
	String() string
}

// check applies a to the governing rule, naming another rule that would
// allow it when it is refused.
func (g *Grant) check(a action) error {
	if g.rule == nil {
		return nil
	}
	ok, why := a.allowedBy(g.rule)
	if ok {
		return nil
	}
	ref := &Refusal{Who: g.Cred, What: a.String(), Rule: describe(g.pol, g.rule), Why: why}
	for _, r := range g.pol.Rules {
		if r == g.rule {
			continue
		}
		if ok, _ := a.allowedBy(r); ok {
			ref.Alt = describe(g.pol, r)
			break
		}
	}
	return ref
}

// Listen checks listening on, or binding to, a chosen local port: proto
// is packet.ProtoTCP or packet.ProtoUDP, addr the local address (invalid
// or unspecified: every address of the interface).
func (g *Grant) Listen(proto uint8, addr netip.Addr, port uint16) error {
	return g.check(listen{proto, addr.Unmap(), port})
}

// Dial checks an outgoing connection from local to remote. Its local port
// is an ephemeral one the nexus checks apart (the rule's ports are for
// listening).
func (g *Grant) Dial(proto uint8, local, remote netip.Addr) error {
	return g.check(dial{proto, local.Unmap(), remote.Unmap()})
}

// Flows checks registering one more flow when the session has have.
func (g *Grant) Flows(have int) error { return g.check(flows(have)) }

// Observe checks reading the nexus's stats.
func (g *Grant) Observe() error { return g.check(observe{}) }

type listen struct {
	proto uint8
	addr  netip.Addr
	port  uint16
}

func protoName(p uint8) string {
	switch p {
	case packet.ProtoTCP:
		return "tcp"
	case packet.ProtoUDP:
		return "udp"
	}
	return fmt.Sprintf("protocol %d", p)
}

func (l listen) String() string {
	where := "every address"
	if l.addr.IsValid() && !l.addr.IsUnspecified() {
		where = l.addr.String()
	}
	return fmt.Sprintf("listen on %s port %d on %s", protoName(l.proto), l.port, where)
}

func (l listen) allowedBy(r *Rule) (bool, string) {
	var ports []PortRange
	switch l.proto {
	case packet.ProtoTCP:
		ports = r.TCP
	case packet.ProtoUDP:
		ports = r.UDP
	default:
		return false, "only tcp and udp ports can be allowed"
	}
	if !inRanges(ports, l.port) {
		return false, fmt.Sprintf("its %s ports are %s", protoName(l.proto), rangesString(ports))
	}
	if why := addrRefused(r, l.addr); why != "" {
		return false, why
	}
	return true, ""
}

// addrRefused says why r does not allow local address a (invalid or
// unspecified: every address), or "".
func addrRefused(r *Rule, a netip.Addr) string {
	if r.Addrs == nil {
		return ""
	}
	if !a.IsValid() || a.IsUnspecified() {
		return fmt.Sprintf("it allows only the addresses %v, not every address: name one of them", r.Addrs)
	}
	if !slices.Contains(r.Addrs, a) {
		return fmt.Sprintf("its addresses are %v", r.Addrs)
	}
	return ""
}

type dial struct {
	proto         uint8
	local, remote netip.Addr
}

func (d dial) String() string {
	return fmt.Sprintf("dial %s from %v to %v", protoName(d.proto), d.local, d.remote)
}

func (d dial) allowedBy(r *Rule) (bool, string) {
	if d.proto != packet.ProtoTCP && d.proto != packet.ProtoUDP {
		return false, "only tcp and udp can dial"
	}
	if !r.Dial {
		return false, "it has no dial = true"
	}
	if why := addrRefused(r, d.local); why != "" {
		return false, why
	}
	if r.DialTo != nil && !slices.ContainsFunc(r.DialTo, func(p netip.Prefix) bool { return p.Contains(d.remote) }) {
		return false, fmt.Sprintf("its dial_to is %v", r.DialTo)
	}
	return true, ""
}

type flows int

func (f flows) String() string { return fmt.Sprintf("register flow number %d", int(f)+1) }

func (f flows) allowedBy(r *Rule) (bool, string) {
	if r.MaxFlows > 0 && int(f) >= r.MaxFlows {
		return false, fmt.Sprintf("its max_flows is %d", r.MaxFlows)
	}
	return true, ""
}

type observe struct{}

func (observe) String() string { return "observe the nexus's stats" }

func (observe) allowedBy(r *Rule) (bool, string) {
	if !r.Observe {
		return false, "it has no observe = true"
	}
	return true, ""
}

// Refusal is a request the policy does not allow. errors.Is(err,
// ErrNotPermitted) holds for it.
type Refusal struct {
	Who  Cred
	What string // the request, e.g. "listen on tcp port 80 on every address"
	Rule string // the governing rule, or "" if none matched
	Why  string // why that rule does not allow it
	Alt  string // a rule that would allow it (for other credentials), or ""
}

func (r *Refusal) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "not permitted: uid %d may not %s", r.Who.UID, r.What)
	if r.Rule != "" {
		fmt.Fprintf(&b, ": %s governs it and %s", r.Rule, r.Why)
		if r.Alt != "" {
			fmt.Fprintf(&b, "; %s would allow it", r.Alt)
		} else {
			b.WriteString("; no rule allows it")
		}
	} else {
		fmt.Fprintf(&b, ": %s", r.Why)
	}
	return b.String()
}

// Is reports whether target is ErrNotPermitted.
func (r *Refusal) Is(target error) bool { return target == ErrNotPermitted }
