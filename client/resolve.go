package client

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
)

// Names. A Stack resolves host names with Go's own DNS resolver
// (net.Resolver with PreferGo), whose queries go over the user-space stack
// itself: they are flows of this stack like any other, so the app needs no
// kernel socket and the policy's dial rules apply to its nameservers too.
// Go's resolver reads /etc/hosts and /etc/resolv.conf (search domains,
// ndots, timeouts, attempts, rotate). Options.ResolvConf and Options.Hosts
// replace the nameservers and the hosts file (a test, a container with
// its own files): Go has no way to read other files, so the Stack applies
// them itself, the hosts file in Dial before any query and the
// nameservers by sending each query Go makes to one of them in turn.
// A nameserver on a loopback address (a local caching resolver such as
// systemd-resolved's 127.0.0.53) is the host's own, which a user-space
// stack cannot reach through the interface: it is asked through the
// kernel.

// dnsPort is the nameservers' port when resolv.conf names none (it never
// does: the format has no port).
const dnsPort = 53

// resolver is a Stack's name service: immutable after New but for next.
type resolver struct {
	r       *net.Resolver
	servers []netip.AddrPort // Options.ResolvConf's nameservers; nil: Go's choice
	hosts   string           // Options.Hosts; "": Go's (/etc/hosts)
	next    atomic.Uint32    // the next of servers to ask
}

// newResolver builds the name service of s from its options, reading the
// files once to fail early on a bad path.
func newResolver(s *Stack, o Options) (*resolver, error) {
	rs := &resolver{hosts: o.Hosts}
	if o.ResolvConf != "" {
		b, err := os.ReadFile(o.ResolvConf)
		if err != nil {
			return nil, fmt.Errorf("client: resolv.conf: %w", err)
		}
		if rs.servers = parseResolvConf(b); len(rs.servers) == 0 {
			return nil, fmt.Errorf("client: resolv.conf %s names no nameserver (want lines \"nameserver IP\")", o.ResolvConf)
		}
	}
	if o.Hosts != "" {
		if _, err := os.ReadFile(o.Hosts); err != nil {
			return nil, fmt.Errorf("client: hosts file: %w", err)
		}
	}
	rs.r = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
		return rs.dial(ctx, s, network, address)
	}}
	return rs, nil
}

// dial is the net.Resolver's Dial: address is the nameserver Go picked
// from /etc/resolv.conf, replaced by one of the configured ones if any.
func (rs *resolver) dial(ctx context.Context, s *Stack, network, address string) (net.Conn, error) {
	if len(rs.servers) > 0 {
		address = rs.servers[int(rs.next.Add(1)-1)%len(rs.servers)].String()
	}
	if ap, err := netip.ParseAddrPort(address); err == nil && ap.Addr().IsLoopback() {
		var d net.Dialer
		return d.DialContext(ctx, network, address)
	}
	return s.DialContext(ctx, network, address)
}

// Resolver returns the Stack's resolver: Go's, with PreferGo, whose DNS
// queries go over this stack to the nameservers of /etc/resolv.conf (or
// Options.ResolvConf). It reads /etc/hosts (Options.Hosts is applied by
// the Stack's Dial only). Dial and DialContext resolve host names with it.
func (s *Stack) Resolver() *net.Resolver { return s.res.r }

// lookup returns the addresses of host for network ("tcp4": IPv4 only,
// "tcp6": IPv6 only), from Options.Hosts first, then the resolver.
func (rs *resolver) lookup(ctx context.Context, network, host string) ([]netip.Addr, error) {
	fam := "ip"
	switch network[len(network)-1] {
	case '4':
		fam = "ip4"
	case '6':
		fam = "ip6"
	}
	if rs.hosts != "" {
		if b, err := os.ReadFile(rs.hosts); err == nil {
			var as []netip.Addr
			for _, a := range parseHosts(b)[hostKey(host)] {
				if fam == "ip" || (fam == "ip4") == a.Is4() {
					as = append(as, a)
				}
			}
			if len(as) > 0 {
				return as, nil
			}
		}
	}
	as, err := rs.r.LookupNetIP(ctx, fam, host)
	for i := range as {
		as[i] = as[i].Unmap()
	}
	return as, err
}

// parseResolvConf returns the nameservers of a resolv.conf: "nameserver IP"
// lines; everything else is ignored.
func parseResolvConf(b []byte) []netip.AddrPort {
	var out []netip.AddrPort
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		if a, err := netip.ParseAddr(f[1]); err == nil && a.Zone() == "" {
			out = append(out, netip.AddrPortFrom(a.Unmap(), dnsPort))
		}
	}
	return out
}

// hostKey is a host name as parseHosts keys it: lower case, without
// trailing dots ("" for none left).
func hostKey(name string) string { return strings.ToLower(strings.TrimRight(name, ".")) }

// parseHosts returns a hosts file's names (hostKey)
// and their addresses in file order: "IP name [aliases...]" lines, '#'
// starting a comment.
func parseHosts(b []byte) map[string][]netip.Addr {
	m := make(map[string][]netip.Addr)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		a, err := netip.ParseAddr(f[0])
		if err != nil || a.Zone() != "" {
			continue
		}
		for _, name := range f[1:] {
			if name = hostKey(name); name != "" {
				m[name] = append(m[name], a.Unmap())
			}
		}
	}
	return m
}

// dialName dials host:port by name: each of its addresses in turn, the
// first that connects wins, as net.Dialer does without its parallel
// "happy eyeballs" race. Only the addresses of families the stack has are
// tried.
func (s *Stack) dialName(ctx context.Context, network, host, port string) (net.Conn, error) {
	a, err := s.live()
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	as, err := s.res.lookup(ctx, network, host)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	var first error
	for _, ip := range as {
		if _, err := a.localFor(ip); err != nil {
			continue
		}
		c, err := s.dialAddr(ctx, network, net.JoinHostPort(ip.String(), port))
		if err == nil {
			return c, nil
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil || errors.Is(err, ErrClosed) || errors.Is(err, ErrNexusGone) {
			break
		}
	}
	if first == nil {
		first = &net.OpError{Op: "dial", Net: network, Err: &net.DNSError{Err: fmt.Sprintf("no address of a family the stack has (it has %v)", a.addrs), Name: host, IsNotFound: true}}
	}
	return nil, first
}
