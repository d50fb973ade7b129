package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

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
// stack busy for seconds after the flood, 128 let it serve again at once.
// (512 brought it back only after a second in one run of three.) The
// accept queue has the same bound in netstack; it empties fast into the
// listener's accept-ahead (acceptAhead). The price: while it is full,
// netstack drops the final ACK of a handshake it answered with a cookie,
// and that connection is accepted only with the client's first data.
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
func (s *Stack) parse(proto, network, address string, local bool) (endpointSpec, error) {
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
		a, err := netip.ParseAddr(host)
		if err != nil {
			return sp, fmt.Errorf("address %q: not an IP literal (a Skylane stack has no resolver): %w", host, err)
		}
		a = a.Unmap()
		if a.Zone() != "" {
			return sp, fmt.Errorf("address %q: zones are not supported", host)
		}
		if (fam == 4 && !a.Is4()) || (fam == 6 && a.Is4()) {
			return sp, fmt.Errorf("address %q is not a %s address", host, network)
		}
		if !a.IsUnspecified() {
			if local && !s.hasAddr(a) {
				return sp, fmt.Errorf("address %v is not one of the stack's addresses %v", a, s.addrs)
			}
			sp.addr = a
			return sp, nil
		}
		fam = 4
		if a.Is6() {
			fam = 6
		}
	}
	if !local {
		return sp, fmt.Errorf("address %q: no host to connect to", address)
	}
	for _, a := range s.addrs {
		sp.v4 = sp.v4 || (a.Is4() && fam != 6)
		sp.v6 = sp.v6 || (a.Is6() && fam != 4)
	}
	if !sp.v4 && !sp.v6 {
		return sp, fmt.Errorf("%s: the stack has no address of that family (it has %v)", network, s.addrs)
	}
	return sp, nil
}

func (s *Stack) hasAddr(a netip.Addr) bool {
	for _, b := range s.addrs {
		if a == b {
			return true
		}
	}
	return false
}

// localFor picks the stack's address of remote's family.
func (s *Stack) localFor(remote netip.Addr) (netip.Addr, error) {
	for _, a := range s.addrs {
		if a.Is4() == remote.Is4() {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("no local address of the family of %v (the stack has %v)", remote, s.addrs)
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
func (s *Stack) bindRegistered(tp tcpip.TransportProtocolNumber, sp endpointSpec, op, network string,
	keys func(port uint16) ([]packet.Key, flow.Kind)) (*bound, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		var wq waiter.Queue
		ep, terr := s.ns.NewEndpoint(tp, sp.netProto(), &wq)
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
		err := s.registerAll(ks, kind)
		if err == nil {
			return &bound{ep: ep, wq: &wq, port: la.Port, keys: ks}, nil
		}
		ep.Close()
		if sp.port != 0 || !errors.Is(err, flow.ErrPortInUse) || attempt == bindAttempts {
			return nil, &net.OpError{Op: op, Net: network, Err: err}
		}
	}
}

// registerAll registers keys with the endpoint, all or none.
func (s *Stack) registerAll(keys []packet.Key, kind flow.Kind) error {
	for i, k := range keys {
		if err := s.ep.Register(k, kind); err != nil {
			for _, r := range keys[:i] {
				s.ep.Release(r)
			}
			return err
		}
	}
	return nil
}

func (s *Stack) releaseAll(keys []packet.Key) error {
	var first error
	for _, k := range keys {
		if err := s.ep.Release(k); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Listen announces on the stack: network "tcp", "tcp4" or "tcp6"; address
// ":port" (any address of the family, or both families for "tcp"), or one
// of the stack's addresses. Port 0 picks a free port. The listener flow is
// registered before netstack listens; Close tears it down (accepted
// connections keep theirs).
func (s *Stack) Listen(network, address string) (net.Listener, error) {
	sp, err := s.parse("tcp", network, address, true)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	b, err := s.bindRegistered(tcp.ProtocolNumber, sp, "listen", network, func(port uint16) ([]packet.Key, flow.Kind) {
		return sp.listenKeys(packet.ProtoTCP, port)
	})
	if err != nil {
		return nil, err
	}
	if terr := b.ep.Listen(listenBacklog); terr != nil {
		b.ep.Close()
		s.releaseAll(b.keys)
		return nil, opError("listen", network, nil, terr)
	}
	l := &listener{TCPListener: gonet.NewTCPListener(s.ns, b.wq, b.ep), s: s, keys: b.keys,
		ready: make(chan accepted, acceptAhead), done: make(chan struct{}), exited: make(chan struct{})}
	go l.run()
	return l, nil
}

// acceptAhead bounds the connections a listener takes from netstack ahead
// of Accept, so that their flows are registered meanwhile, in batches
// (stack.Endpoint.Prepare). Netstack's accept queue (listenBacklog) is
// behind it; past both, netstack stops completing handshakes.
const acceptAhead = 256

// listener is a TCP listener whose accept goroutine (run, owned by the
// listener: Close stops it, as does the Stack's Close) takes connections
// from netstack as their handshakes complete and starts registering their
// flows; Accept hands them out in order once registered. A connection the
// nexus refused was reset; Accept then returns a temporary error wrapping
// why (ErrTooManyFlows), as net/http's Serve expects of a transient
// failure.
type listener struct {
	*gonet.TCPListener
	s      *Stack
	keys   []packet.Key
	ready  chan accepted // filled by run; closed when it returns
	err    error         // why run returned; read once ready is closed
	done   chan struct{} // closed by Close
	exited chan struct{} // closed when run returned
	once   sync.Once
}

type accepted struct {
	c    net.Conn
	wait func() error // the connection's flow is registered (stack.Endpoint.Prepare)
}

// refusedError is a connection the nexus refused: a temporary error.
type refusedError struct{ err error }

func (e *refusedError) Error() string {
	return "connection refused by the nexus and reset: " + e.err.Error()
}
func (e *refusedError) Unwrap() error   { return e.err }
func (e *refusedError) Temporary() bool { return true }
func (e *refusedError) Timeout() bool   { return false }

func (l *listener) run() {
	defer close(l.exited)
	defer close(l.ready)
	for {
		c, err := l.TCPListener.Accept()
		if err != nil {
			l.err = err
			return
		}
		la, ra := c.LocalAddr().(*net.TCPAddr), c.RemoteAddr().(*net.TCPAddr)
		a := accepted{c: c, wait: l.s.ep.Prepare(packet.MakeKey(packet.ProtoTCP, la.AddrPort(), ra.AddrPort()))}
		select {
		case l.ready <- a:
		case <-l.done:
			c.Close()
			l.err = net.ErrClosed
			return
		}
	}
}

// Accept implements net.Listener.Accept: the next connection whose flow is
// registered.
func (l *listener) Accept() (net.Conn, error) {
	a, ok := <-l.ready
	if !ok {
		return nil, l.err
	}
	if err := a.wait(); err != nil {
		a.c.Close()
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: &refusedError{err}}
	}
	return a.c, nil
}

// Close closes the listener, stops its accept goroutine, closes the
// connections it took and nobody accepted, and tears down its flows.
func (l *listener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.TCPListener.Close()
		<-l.exited
		for a := range l.ready {
			a.c.Close()
		}
		if rerr := l.s.releaseAll(l.keys); rerr != nil && err == nil && l.s.checkOpen() == nil {
			err = rerr
		}
	})
	return err
}

// Dial connects to address on the named network ("tcp", "tcp4", "tcp6",
// "udp", "udp4", "udp6").
func (s *Stack) Dial(network, address string) (net.Conn, error) {
	return s.DialContext(context.Background(), network, address)
}

// DialContext connects to address: it binds a free local port, registers
// the 5-tuple flow, and only then lets netstack send its first packet. The
// TCP flow is torn down when netstack lets the connection go; a UDP one on
// Close.
func (s *Stack) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	proto := "tcp"
	if len(network) >= 3 && network[:3] == "udp" {
		proto = "udp"
	}
	rsp, err := s.parse(proto, network, address, false)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	remote := netip.AddrPortFrom(rsp.addr, rsp.port)
	laddr, err := s.localFor(remote.Addr())
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	sp := endpointSpec{addr: laddr}
	tp, pp := tcpip.TransportProtocolNumber(tcp.ProtocolNumber), uint8(packet.ProtoTCP)
	if proto == "udp" {
		tp, pp = udp.ProtocolNumber, packet.ProtoUDP
	}
	b, err := s.bindRegistered(tp, sp, "dial", network, func(port uint16) ([]packet.Key, flow.Kind) {
		return []packet.Key{packet.MakeKey(pp, netip.AddrPortFrom(laddr, port), remote)}, flow.Connected
	})
	if err != nil {
		return nil, err
	}
	raddr := tcpip.FullAddress{NIC: nicID, Addr: tcpAddr(remote.Addr()), Port: remote.Port()}
	if proto == "udp" {
		if terr := b.ep.Connect(raddr); terr != nil {
			b.ep.Close()
			s.releaseAll(b.keys)
			return nil, opError("dial", network, net.UDPAddrFromAddrPort(remote), terr)
		}
		return newUDPConn(s, b), nil
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
			s.releaseAll(b.keys)
			return nil, &net.OpError{Op: "dial", Net: network, Addr: net.TCPAddrFromAddrPort(remote), Err: ctx.Err()}
		case <-notify:
		}
		terr = b.ep.LastError()
	}
	if terr != nil {
		b.ep.Close()
		s.releaseAll(b.keys)
		return nil, opError("dial", network, net.TCPAddrFromAddrPort(remote), terr)
	}
	return gonet.NewTCPConn(b.wq, b.ep), nil
}

// ListenPacket announces a UDP socket: network "udp", "udp4" or "udp6",
// address as for Listen. Its listener flow is registered before it can
// receive; each remote it sends to gets a 5-tuple flow, registered as the
// first datagram leaves (the flowswitch lets a listener flow send nothing
// but TCP resets). Close tears them all down.
func (s *Stack) ListenPacket(network, address string) (net.PacketConn, error) {
	sp, err := s.parse("udp", network, address, true)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	b, err := s.bindRegistered(udp.ProtocolNumber, sp, "listen", network, func(port uint16) ([]packet.Key, flow.Kind) {
		return sp.listenKeys(packet.ProtoUDP, port)
	})
	if err != nil {
		return nil, err
	}
	return newUDPConn(s, b), nil
}

// udpConn is gonet's UDPConn with the socket's flows, and a WriteTo that
// cannot miss its wake-up (see WriteTo).
type udpConn struct {
	*gonet.UDPConn
	s    *Stack
	ep   tcpip.Endpoint
	wq   *waiter.Queue
	keys []packet.Key
	once sync.Once
	wdl  atomic.Int64 // write deadline in Unix nanoseconds; 0: none
}

func newUDPConn(s *Stack, b *bound) *udpConn {
	return &udpConn{UDPConn: gonet.NewUDPConn(b.wq, b.ep), s: s, ep: b.ep, wq: b.wq, keys: b.keys}
}

// SetDeadline implements net.Conn.SetDeadline.
func (c *udpConn) SetDeadline(t time.Time) error {
	c.setWriteDeadline(t)
	return c.UDPConn.SetDeadline(t)
}

// SetWriteDeadline implements net.Conn.SetWriteDeadline.
func (c *udpConn) SetWriteDeadline(t time.Time) error {
	c.setWriteDeadline(t)
	return c.UDPConn.SetWriteDeadline(t)
}

func (c *udpConn) setWriteDeadline(t time.Time) {
	if t.IsZero() {
		c.wdl.Store(0)
	} else {
		c.wdl.Store(t.UnixNano())
	}
}

// Write implements net.Conn.Write.
func (c *udpConn) Write(b []byte) (int, error) { return c.WriteTo(b, nil) }

// WriteTo implements net.PacketConn.WriteTo. gonet's registers for the
// writable event only after a write would block and then waits without
// trying again, so a send-buffer release in between is lost and the
// writer hangs; here the endpoint releases queued packets from its own
// goroutine, which makes that window real. This loop registers, retries,
// and only then waits.
func (c *udpConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	var opts tcpip.WriteOptions
	if addr != nil {
		ua, ok := addr.(*net.UDPAddr)
		if !ok {
			return 0, &net.OpError{Op: "write", Net: "udp", Addr: addr, Err: fmt.Errorf("address %T is not a *net.UDPAddr", addr)}
		}
		opts.To = &tcpip.FullAddress{Addr: tcpip.AddrFromSlice(ua.IP), Port: uint16(ua.Port)}
	}
	var (
		r     bytes.Reader
		entry waiter.Entry
		ready <-chan struct{}
		timer *time.Timer
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		dl := c.wdl.Load()
		if dl != 0 && time.Now().UnixNano() >= dl {
			return 0, &net.OpError{Op: "write", Net: "udp", Addr: addr, Err: os.ErrDeadlineExceeded}
		}
		r.Reset(b)
		n, terr := c.ep.Write(&r, opts)
		if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
			if terr != nil {
				return int(n), opError("write", "udp", addr, terr)
			}
			return int(n), nil
		}
		if ready == nil {
			entry, ready = waiter.NewChannelEntry(waiter.WritableEvents)
			c.wq.EventRegister(&entry)
			defer c.wq.EventUnregister(&entry)
			continue // try again: space may have come before we registered
		}
		var fire <-chan time.Time
		if dl != 0 {
			if timer == nil {
				timer = time.NewTimer(time.Until(time.Unix(0, dl)))
			} else {
				timer.Reset(time.Until(time.Unix(0, dl)))
			}
			fire = timer.C
		}
		select {
		case <-ready:
		case <-fire:
		}
	}
}

// Close closes the socket and tears down its flows.
func (c *udpConn) Close() error {
	err := c.UDPConn.Close()
	c.once.Do(func() {
		if rerr := c.s.releaseAll(c.keys); rerr != nil && err == nil && c.s.checkOpen() == nil {
			err = rerr
		}
	})
	return err
}

func opError(op, network string, addr net.Addr, terr tcpip.Error) error {
	return &net.OpError{Op: op, Net: network, Addr: addr, Err: errors.New(terr.String())}
}
