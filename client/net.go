package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet"
)

// bindAttempts bounds the retries when the port netstack picked for an
// ephemeral bind is held at the nexus by another app: each retry binds a
// fresh random port, so eight failures in a row mean the port space is
// nearly full, not bad luck.
const bindAttempts = 8

// listenBacklog bounds a listener's half-open connections and its accept
// queue in netstack: past it netstack answers SYNs with SYN cookies, which
// keep no state. Netstack's half-open connection is a whole endpoint with
// timers (Linux's a 256-byte request), so the bound is low: under a SYN
// flood, 4096 half-open endpoints retransmitting their SYN-ACKs kept the
// stack busy for seconds after the flood, 128 let it serve again at once
// (512 brought it back only after a second in one run of three). The
// accept queue has the same bound in netstack. The price: while it is
// full, netstack drops the final ACK of a handshake it answered with a
// cookie, and that connection is accepted only with the client's first
// data.
const listenBacklog = 128

// endpointSpec is where a socket binds: one address, or "any" in one or both
// families.
type endpointSpec struct {
	addr   netip.Addr // valid: this address only
	v4, v6 bool       // with !addr.IsValid(): the families "any" covers
	port   uint16
}

// parse reads network ("tcp", "tcp4", "tcp6", or the udp ones) and an
// address "host:port" whose host is empty, an IP literal of one of the
// stack's addresses, or unspecified.
func (a *attachment) parse(proto, network, address string, local bool) (endpointSpec, error) {
	var sp endpointSpec
	fam := 0
	switch network {
	case proto:
	case proto + "4":
		fam = 4
	case proto + "6":
		fam = 6
	default:
		return sp, net.UnknownNetworkError(network)
	}
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return sp, err
	}
	pn, err := net.LookupPort(network, portStr)
	if err != nil {
		return sp, err
	}
	sp.port = uint16(pn)
	if host != "" {
		ip, err := netip.ParseAddr(host)
		if err != nil {
			return sp, fmt.Errorf("address %q: not an IP literal (only Dial resolves names): %w", host, err)
		}
		ip = ip.Unmap()
		if ip.Zone() != "" {
			return sp, fmt.Errorf("address %q: zones are not supported", host)
		}
		if (fam == 4 && !ip.Is4()) || (fam == 6 && ip.Is4()) {
			return sp, fmt.Errorf("address %q is not a %s address", host, network)
		}
		if !ip.IsUnspecified() {
			if local && !a.hasAddr(ip) {
				return sp, fmt.Errorf("address %v is not one of the stack's addresses %v", ip, a.addrs)
			}
			sp.addr = ip
			return sp, nil
		}
		fam = 4
		if ip.Is6() {
			fam = 6
		}
	}
	if !local {
		return sp, fmt.Errorf("address %q: no host to connect to", address)
	}
	for _, ip := range a.addrs {
		sp.v4 = sp.v4 || (ip.Is4() && fam != 6)
		sp.v6 = sp.v6 || (ip.Is6() && fam != 4)
	}
	if !sp.v4 && !sp.v6 {
		return sp, fmt.Errorf("%s: the stack has no address of that family (it has %v)", network, a.addrs)
	}
	return sp, nil
}

func (a *attachment) hasAddr(ip netip.Addr) bool {
	for _, b := range a.addrs {
		if ip == b {
			return true
		}
	}
	return false
}

// localFor picks the stack's address of remote's family.
func (a *attachment) localFor(remote netip.Addr) (netip.Addr, error) {
	for _, ip := range a.addrs {
		if ip.Is4() == remote.Is4() {
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("no local address of the family of %v (the stack has %v)", remote, a.addrs)
}

// netProto is the netstack protocol a socket of this spec uses: IPv6 for
// dual-stack "any" (with V6Only off).
func (sp endpointSpec) netProto() tcpip.NetworkProtocolNumber {
	if (sp.addr.IsValid() && sp.addr.Is4()) || (!sp.addr.IsValid() && !sp.v6) {
		return ipv4.ProtocolNumber
	}
	return ipv6.ProtocolNumber
}

func (sp endpointSpec) full(port uint16) tcpip.FullAddress {
	fa := tcpip.FullAddress{NIC: nicID, Port: port}
	if sp.addr.IsValid() {
		fa.Addr = tcpAddr(sp.addr)
	}
	return fa
}

// listenKeys are the listener flows of a socket bound to sp on port.
func (sp endpointSpec) listenKeys(proto uint8, port uint16) ([]packet.Key, flow.Kind) {
	if sp.addr.IsValid() {
		return []packet.Key{packet.MakeKey(proto, netip.AddrPortFrom(sp.addr, port), netip.AddrPort{})}, flow.Listener3
	}
	var keys []packet.Key
	if sp.v4 {
		keys = append(keys, packet.MakeKey(proto, netip.AddrPortFrom(netip.IPv4Unspecified(), port), netip.AddrPort{}))
	}
	if sp.v6 {
		keys = append(keys, packet.MakeKey(proto, netip.AddrPortFrom(netip.IPv6Unspecified(), port), netip.AddrPort{}))
	}
	return keys, flow.Listener2
}

// bound is a netstack endpoint bound to a port whose flows are registered.
type bound struct {
	ep   tcpip.Endpoint
	wq   *waiter.Queue
	port uint16
	keys []packet.Key
}

// bindRegistered creates a netstack endpoint, binds it as sp says and
// registers the flows keys(port) returns, retrying with a fresh ephemeral
// port while the nexus says another app holds the one netstack picked.
func (a *attachment) bindRegistered(tp tcpip.TransportProtocolNumber, sp endpointSpec, op, network string,
	keys func(port uint16) ([]packet.Key, flow.Kind)) (*bound, error) {
	for attempt := 1; ; attempt++ {
		var wq waiter.Queue
		ep, terr := a.ns.NewEndpoint(tp, sp.netProto(), &wq)
		if terr != nil {
			return nil, opError(op, network, nil, terr)
		}
		if !sp.addr.IsValid() && sp.v4 && sp.v6 {
			ep.SocketOptions().SetV6Only(false)
		}
		if terr := ep.Bind(sp.full(sp.port)); terr != nil {
			ep.Close()
			return nil, opError(op, network, nil, terr)
		}
		la, terr := ep.GetLocalAddress()
		if terr != nil {
			ep.Close()
			return nil, opError(op, network, nil, terr)
		}
		ks, kind := keys(la.Port)
		err := a.registerAll(ks, kind)
		if err == nil {
			return &bound{ep: ep, wq: &wq, port: la.Port, keys: ks}, nil
		}
		ep.Close()
		if sp.port != 0 || !errors.Is(err, flow.ErrPortInUse) || attempt == bindAttempts {
			return nil, &net.OpError{Op: op, Net: network, Err: a.wrap(err)}
		}
	}
}

// registerAll registers keys with the endpoint, all or none.
func (a *attachment) registerAll(keys []packet.Key, kind flow.Kind) error {
	for i, k := range keys {
		if err := a.ep.Register(k, kind); err != nil {
			for _, r := range keys[:i] {
				a.ep.Release(r)
			}
			return err
		}
	}
	return nil
}

func (a *attachment) releaseAll(keys []packet.Key) error {
	var first error
	for _, k := range keys {
		if err := a.ep.Release(k); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Dial connects to address on the named network ("tcp", "tcp4", "tcp6",
// "udp", "udp4", "udp6").
func (s *Stack) Dial(network, address string) (net.Conn, error) {
	return s.DialContext(context.Background(), network, address)
}

// DialContext connects to address: it binds a free local port, registers
// the 5-tuple flow, and only then lets netstack send its first packet. The
// TCP flow is torn down when netstack lets the connection go; a UDP one on
// Close. A host name is resolved first (Options.Hosts, then Resolver,
// whose queries go over this stack), and its addresses tried in turn.
func (s *Stack) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if host, port, err := net.SplitHostPort(address); err == nil && host != "" {
		if _, perr := netip.ParseAddr(host); perr != nil {
			return s.dialName(ctx, network, host, port)
		}
	}
	return s.dialAddr(ctx, network, address)
}

// dialAddr is DialContext to an IP literal.
func (s *Stack) dialAddr(ctx context.Context, network, address string) (net.Conn, error) {
	proto := "tcp"
	if len(network) >= 3 && network[:3] == "udp" {
		proto = "udp"
	}
	a, err := s.live()
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	rsp, err := a.parse(proto, network, address, false)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	remote := netip.AddrPortFrom(rsp.addr, rsp.port)
	laddr, err := a.localFor(remote.Addr())
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	sp := endpointSpec{addr: laddr}
	tp, pp := tcpip.TransportProtocolNumber(tcp.ProtocolNumber), uint8(packet.ProtoTCP)
	if proto == "udp" {
		tp, pp = udp.ProtocolNumber, packet.ProtoUDP
	}
	b, err := a.bindRegistered(tp, sp, "dial", network, func(port uint16) ([]packet.Key, flow.Kind) {
		return []packet.Key{packet.MakeKey(pp, netip.AddrPortFrom(laddr, port), remote)}, flow.Connected
	})
	if err != nil {
		return nil, err
	}
	raddr := tcpip.FullAddress{NIC: nicID, Addr: tcpAddr(remote.Addr()), Port: remote.Port()}
	if proto == "udp" {
		if terr := b.ep.Connect(raddr); terr != nil {
			b.ep.Close()
			a.releaseAll(b.keys)
			return nil, a.wrap(opError("dial", network, net.UDPAddrFromAddrPort(remote), terr))
		}
		return newUDPConn(a, b), nil
	}
	// As gonet.DialTCPWithBind does, with the flow registered in between.
	entry, notify := waiter.NewChannelEntry(waiter.WritableEvents)
	b.wq.EventRegister(&entry)
	defer b.wq.EventUnregister(&entry)
	terr := b.ep.Connect(raddr)
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			b.ep.Close()
			a.releaseAll(b.keys)
			return nil, &net.OpError{Op: "dial", Net: network, Addr: net.TCPAddrFromAddrPort(remote), Err: ctx.Err()}
		case <-a.gone:
			b.ep.Close()
			return nil, &net.OpError{Op: "dial", Net: network, Addr: net.TCPAddrFromAddrPort(remote), Err: a.Err()}
		case <-notify:
		}
		terr = b.ep.LastError()
	}
	if terr != nil {
		b.ep.Close()
		a.releaseAll(b.keys)
		return nil, a.wrap(opError("dial", network, net.TCPAddrFromAddrPort(remote), terr))
	}
	return &tcpConn{TCPConn: gonet.NewTCPConn(b.wq, b.ep), a: a}, nil
}

func opError(op, network string, addr net.Addr, terr tcpip.Error) error {
	return &net.OpError{Op: op, Net: network, Addr: addr, Err: errors.New(terr.String())}
}
