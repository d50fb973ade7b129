package policy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/skylane/skylane/control"
)

// ErrNotPermitted is what every refusal wraps: the contract's error, so
// that an app in another process sees errors.Is(err, client.ErrNotPermitted).
var ErrNotPermitted = control.ErrNotPermitted

// MaxFlowsLimit bounds max_flows: a flow table entry costs the nexus about
// 200 bytes, and more flows than this in one app is a typo, not a plan.
const MaxFlowsLimit = 1 << 24

// Policy is a parsed policy file: its rules in file order. Immutable.
type Policy struct {
	Name  string // the file's name, for messages ("" for RootOnly)
	Rules []*Rule
}

// Rule is one [[allow]] table. Immutable.
type Rule struct {
	N    int // 1-based position among the file's rules
	Line int // line of its [[allow]] header, 0 if not found

	sel    selector
	TCP    []PortRange    // ports it may listen on or bind to, TCP
	UDP    []PortRange    // the same, UDP
	Addrs  []netip.Addr   // local addresses it may use; nil: every address of the interface
	Dial   bool           // may open outgoing connections
	DialTo []netip.Prefix // if not nil, outgoing connections only to these
	// Limits; 0 means none.
	MaxFlows int   // flows registered at once
	MaxPool  int64 // bytes of packet pool
	Rate     int64 // transmit bits per second
	Observe  bool  // may read the nexus's stats
}

// selector is what a rule matches: exactly one of a uid, a gid (primary
// or supplementary), with the name it was given as, if any.
type selector struct {
	group bool   // gid, else uid
	id    uint32 // the uid or gid
	name  string // user or group name as written, or ""
}

func (s selector) String() string {
	switch {
	case s.group && s.name != "":
		return fmt.Sprintf("group %s (gid %d)", s.name, s.id)
	case s.group:
		return fmt.Sprintf("gid %d", s.id)
	case s.name != "":
		return fmt.Sprintf("user %s (uid %d)", s.name, s.id)
	}
	return fmt.Sprintf("uid %d", s.id)
}

// Selects says which credentials the rule is for, e.g. "uid 65534" or
// "group web (gid 1001)".
func (r *Rule) Selects() string { return r.sel.String() }

// Matches reports whether the rule's selector matches c.
func (r *Rule) Matches(c Cred) bool {
	if !r.sel.group {
		return c.UID == r.sel.id
	}
	return c.GID == r.sel.id || slices.Contains(c.Groups, r.sel.id)
}

// PortRange is an inclusive range of ports, 1..65535: "8080" or
// "9000-9099" in the file.
type PortRange struct{ Lo, Hi uint16 }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *PortRange) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	lo, hi, isRange := strings.Cut(s, "-")
	l, err1 := parsePort(lo)
	h, err2 := l, error(nil)
	if isRange {
		h, err2 = parsePort(hi)
	}
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("port range %q: %w (want \"8080\" or \"9000-9099\")", s, err)
	}
	if h < l {
		return fmt.Errorf("port range %q: ends before it starts", s)
	}
	*p = PortRange{l, h}
	return nil
}

func parsePort(s string) (uint16, error) {
	v, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil || v == 0 {
		return 0, fmt.Errorf("%q is not a port 1..65535", s)
	}
	return uint16(v), nil
}

func (p PortRange) String() string {
	if p.Lo == p.Hi {
		return strconv.Itoa(int(p.Lo))
	}
	return fmt.Sprintf("%d-%d", p.Lo, p.Hi)
}

func inRanges(rs []PortRange, port uint16) bool {
	for _, r := range rs {
		if port >= r.Lo && port <= r.Hi {
			return true
		}
	}
	return false
}

func rangesString(rs []PortRange) string {
	if len(rs) == 0 {
		return "none"
	}
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = r.String()
	}
	return strings.Join(s, ", ")
}

// Size is a byte count: an integer, or a string with a unit ("64MiB",
// "512KiB", "1GB").
type Size int64

// Rate is a bit rate in bits per second: an integer, or a string with a
// unit ("1Gbit", "100Mbit", "500kbit"), as tc writes them.
type Rate int64

var (
	sizeUnits = []unit{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
		{"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"kB", 1e3}, {"B", 1}}
	rateUnits = []unit{{"Tbit", 1e12}, {"Gbit", 1e9}, {"Mbit", 1e6}, {"kbit", 1e3}, {"bit", 1}}
)

type unit struct {
	suffix string
	mult   int64
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Size) UnmarshalText(b []byte) error {
	v, err := parseUnits(string(b), sizeUnits, "size", `"64MiB"`)
	*s = Size(v)
	return err
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (r *Rate) UnmarshalText(b []byte) error {
	v, err := parseUnits(string(b), rateUnits, "rate", `"1Gbit"`)
	*r = Rate(v)
	return err
}

// parseUnits parses a positive integer with an optional unit of units.
func parseUnits(text string, units []unit, what, example string) (int64, error) {
	s := strings.TrimSpace(text)
	num, mult := s, int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	v, err := strconv.ParseInt(num, 10, 64)
	if err != nil || v <= 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("%s %q: want a positive whole number with an optional unit, e.g. %s", what, s, example)
	}
	return v * mult, nil
}

// Resolver looks users and groups up by name; Parse resolves every name
// when the policy is loaded. System uses the system's databases.
type Resolver struct {
	User  func(name string) (uint32, error)
	Group func(name string) (uint32, error)
}

// System resolves names with os/user (/etc/passwd, /etc/group, or NSS
// with cgo).
func System() Resolver {
	return Resolver{
		User: func(name string) (uint32, error) {
			u, err := user.Lookup(name)
			if err != nil {
				return 0, err
			}
			id, err := strconv.ParseUint(u.Uid, 10, 32)
			return uint32(id), err
		},
		Group: func(name string) (uint32, error) {
			g, err := user.LookupGroup(name)
			if err != nil {
				return 0, err
			}
			id, err := strconv.ParseUint(g.Gid, 10, 32)
			return uint32(id), err
		},
	}
}

// RootOnly is the policy without a file: no rule, so only uid 0 attaches.
func RootOnly() *Policy { return &Policy{} }

// Load reads and parses the policy file at path, resolving names with
// System.
func Load(path string) (*Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return Parse(path, b, System())
}

// ruleFile is one [[allow]] table as decoded; check turns it into a Rule.
type ruleFile struct {
	UID      *int64         `toml:"uid"`
	GID      *int64         `toml:"gid"`
	User     *string        `toml:"user"`
	Group    *string        `toml:"group"`
	TCP      []PortRange    `toml:"tcp"`
	UDP      []PortRange    `toml:"udp"`
	Addrs    []netip.Addr   `toml:"addrs"`
	MaxFlows *int64         `toml:"max_flows"`
	MaxPool  *Size          `toml:"max_pool"`
	Rate     *Rate          `toml:"rate"`
	Dial     bool           `toml:"dial"`
	DialTo   []netip.Prefix `toml:"dial_to"`
	Observe  bool           `toml:"observe"`
}

// ruleKeys are ruleFile's keys, spelled exactly (the decoder would also
// take "UID").
var ruleKeys = []string{"uid", "gid", "user", "group", "tcp", "udp", "addrs",
	"max_flows", "max_pool", "rate", "dial", "dial_to", "observe"}

// Parse parses a policy file's text; name is used in messages. Names are
// resolved with res. It never panics.
func Parse(name string, src []byte, res Resolver) (*Policy, error) {
	var f struct {
		Allow []ruleFile `toml:"allow"`
	}
	md, err := toml.NewDecoder(bytes.NewReader(src)).Decode(&f)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			// Its message names the line and the key; the long form would
			// quote the file.
			return nil, fmt.Errorf("policy %s: line %d: %s", name, pe.Position.Line, strings.TrimPrefix(pe.Message, "toml: "))
		}
		return nil, fmt.Errorf("policy %s: %w", name, err)
	}
	heads := headerLines(src)
	for _, k := range md.Keys() {
		if len(k) == 1 && k[0] == "allow" {
			continue
		}
		if len(k) == 2 && k[0] == "allow" && slices.Contains(ruleKeys, k[1]) {
			continue
		}
		return nil, fmt.Errorf("policy %s: line %d: unknown key %q (an [[allow]] rule has %s)",
			name, keyLine(src, k[len(k)-1]), k.String(), strings.Join(ruleKeys, ", "))
	}
	p := &Policy{Name: name}
	for i, rf := range f.Allow {
		r := &Rule{N: i + 1}
		if i < len(heads) {
			r.Line = heads[i]
		}
		if err := rf.check(r, res); err != nil {
			return nil, fmt.Errorf("policy %s: rule %d (line %d): %w", name, r.N, r.Line, err)
		}
		p.Rules = append(p.Rules, r)
	}
	return p, nil
}

// check fills r from rf, checking what the decoder could not.
func (rf *ruleFile) check(r *Rule, res Resolver) error {
	n := 0
	for _, set := range []bool{rf.UID != nil, rf.GID != nil, rf.User != nil, rf.Group != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("has %d of uid, gid, user and group: give exactly one (one rule per user or group)", n)
	}
	id := func(what string, v int64) (uint32, error) {
		if v < 0 || v > 1<<32-2 { // (uid_t)-1 means "no change" to the kernel, never a user
			return 0, fmt.Errorf("%s %d is not a valid id", what, v)
		}
		return uint32(v), nil
	}
	var err error
	switch {
	case rf.UID != nil:
		r.sel.id, err = id("uid", *rf.UID)
	case rf.GID != nil:
		r.sel.group = true
		r.sel.id, err = id("gid", *rf.GID)
	case rf.User != nil:
		r.sel.name = *rf.User
		if r.sel.id, err = lookup(res.User, *rf.User); err != nil {
			err = fmt.Errorf("user %q: %w", *rf.User, err)
		}
	case rf.Group != nil:
		r.sel.group, r.sel.name = true, *rf.Group
		if r.sel.id, err = lookup(res.Group, *rf.Group); err != nil {
			err = fmt.Errorf("group %q: %w", *rf.Group, err)
		}
	}
	if err != nil {
		return err
	}
	r.TCP, r.UDP = rf.TCP, rf.UDP
	for _, a := range rf.Addrs {
		if a.Zone() != "" || !a.Unmap().IsGlobalUnicast() {
			return fmt.Errorf("addrs: %v is not a unicast address without a zone", a)
		}
		r.Addrs = append(r.Addrs, a.Unmap())
	}
	if rf.Addrs != nil && len(rf.Addrs) == 0 {
		return errors.New("addrs = []: no address at all; leave addrs out for every address of the interface")
	}
	for _, pf := range rf.DialTo {
		r.DialTo = append(r.DialTo, pf.Masked())
	}
	if len(rf.DialTo) > 0 && !rf.Dial {
		return errors.New("dial_to without dial = true: say dial = true too, or drop dial_to")
	}
	r.Dial = rf.Dial
	if rf.DialTo != nil && len(rf.DialTo) == 0 {
		return errors.New("dial_to = []: no destination at all; leave dial_to out for every destination")
	}
	if rf.MaxFlows != nil {
		if *rf.MaxFlows <= 0 || *rf.MaxFlows > MaxFlowsLimit {
			return fmt.Errorf("max_flows %d: want 1..%d", *rf.MaxFlows, MaxFlowsLimit)
		}
		r.MaxFlows = int(*rf.MaxFlows)
	}
	if rf.MaxPool != nil {
		r.MaxPool = int64(*rf.MaxPool)
	}
	if rf.Rate != nil {
		r.Rate = int64(*rf.Rate)
	}
	r.Observe = rf.Observe
	return nil
}

func lookup(f func(string) (uint32, error), name string) (uint32, error) {
	if f == nil {
		return 0, errors.New("no resolver for names: use a numeric id")
	}
	if name == "" {
		return 0, errors.New("empty name")
	}
	return f(name)
}

// headerLines returns the line of each [[allow]] header, in order.
func headerLines(src []byte) []int {
	var lines []int
	sc := bufio.NewScanner(bytes.NewReader(src))
	sc.Buffer(nil, len(src)+1)
	for n := 1; sc.Scan(); n++ {
		l := strings.TrimSpace(sc.Text())
		if before, _, _ := strings.Cut(l, "#"); strings.ReplaceAll(before, " ", "") == "[[allow]]" {
			lines = append(lines, n)
		}
	}
	return lines
}

// keyLine returns the first line that assigns key, or 0.
func keyLine(src []byte, key string) int {
	sc := bufio.NewScanner(bytes.NewReader(src))
	sc.Buffer(nil, len(src)+1)
	for n := 1; sc.Scan(); n++ {
		l := strings.TrimSpace(sc.Text())
		if k, _, ok := strings.Cut(l, "="); ok && strings.Trim(strings.TrimSpace(k), `"'`) == key {
			return n
		}
		if strings.Trim(l, "[] ") == key {
			return n
		}
	}
	return 0
}
