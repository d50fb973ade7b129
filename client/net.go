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

// listenBacklog matches Linux's default somaxconn, as gonet does.
const listenBacklog = 4096

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
			return sp, fmt.Errorf("address %q: not an IP literal (a Skylane stack has no resolver): %w", host, err)
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

// Listen announces on the stack: network "tcp", "tcp4" or "tcp6"; address
// ":port" (any address of the family, or both families for "tcp"), or one
// of the stack's addresses. Port 0 picks a free port. The listener flow is
// registered before netstack listens; Close tears it down (accepted
// connections keep theirs). On a re-attaching Stack the listener outlives
// its nexus: its flows are registered again, on the same port, when a
// nexus serves again, and Accept goes on.
func (s *Stack) Listen(network, address string) (net.Listener, error) {
	a, err := s.live()
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	sp, err := a.parse("tcp", network, address, true)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	l := &listener{s: s, network: network, sp: sp, done: make(chan struct{})}
	if err := l.listenOn(a); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if gerr := a.Err(); gerr != nil || s.closed {
		s.mu.Unlock()
		l.Close()
		if gerr == nil {
			gerr = ErrClosed
		}
		return nil, &net.OpError{Op: "listen", Net: network, Err: gerr}
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	return l, nil
}

// listener is a TCP listener that may move from one attachment to the
// next (re-attach): Accept takes from the current one.
type listener struct {
	s       *Stack        // immutable
	network string        // immutable
	done    chan struct{} // closed by Close

	mu     sync.Mutex
	sp     endpointSpec // the bound port once listening, so a re-listen takes it again
	a      *attachment
	inner  *gonet.TCPListener
	keys   []packet.Key
	err    error // re-listening on a new attachment failed
	closed bool
}

// listenOn binds, registers and listens on a; l.mu held or l not shared.
func (l *listener) listenOn(a *attachment) error {
	b, err := a.bindRegistered(tcp.ProtocolNumber, l.sp, "listen", l.network, func(port uint16) ([]packet.Key, flow.Kind) {
		return l.sp.listenKeys(packet.ProtoTCP, port)
	})
	if err != nil {
		return err
	}
	if terr := b.ep.Listen(listenBacklog); terr != nil {
		b.ep.Close()
		a.releaseAll(b.keys)
		return opError("listen", l.network, nil, terr)
	}
	l.sp.port = b.port
	l.a, l.inner, l.keys = a, gonet.NewTCPListener(a.ns, b.wq, b.ep), b.keys
	return nil
}

// relisten moves an open listener to a, the attachment that replaced its
// own; Accept then returns the error if that fails (another app took the
// port meanwhile, say).
func (l *listener) relisten(a *attachment) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || l.a == a {
		return
	}
	if err := l.listenOn(a); err != nil {
		l.err = fmt.Errorf("client: listen again on %s after the nexus came back: %w", l.inner.Addr(), err)
	}
}

// Accept implements net.Listener.Accept. When the nexus goes, it returns
// an error wrapping ErrNexusGone, or on a re-attaching Stack waits for
// the listener to be registered on the next nexus.
func (l *listener) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		a, inner, closed, rerr := l.a, l.inner, l.closed, l.err
		l.mu.Unlock()
		if closed {
			return nil, &net.OpError{Op: "accept", Net: l.network, Addr: inner.Addr(), Err: net.ErrClosed}
		}
		if rerr != nil {
			return nil, &net.OpError{Op: "accept", Net: l.network, Addr: inner.Addr(), Err: rerr}
		}
		c, err := inner.Accept()
		if err == nil {
			return &tcpConn{TCPConn: c.(*gonet.TCPConn), a: a}, nil
		}
		select {
		case <-l.done: // Close woke it
			return nil, &net.OpError{Op: "accept", Net: l.network, Addr: inner.Addr(), Err: net.ErrClosed}
		default:
		}
		gerr := a.Err()
		if gerr == nil {
			return nil, err
		}
		if !l.s.reattach || errors.Is(gerr, ErrClosed) {
			return nil, &net.OpError{Op: "accept", Net: l.network, Addr: inner.Addr(), Err: gerr}
		}
		select {
		case <-a.replaced:
		case <-l.done:
		case <-l.s.quit:
			return nil, &net.OpError{Op: "accept", Net: l.network, Addr: inner.Addr(), Err: ErrClosed}
		}
	}
}

// Addr implements net.Listener.Addr.
func (l *listener) Addr() net.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.inner.Addr()
}

// Close closes the listener and tears down its flows.
func (l *listener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.done)
	a, keys := l.a, l.keys
	err := l.inner.Close()
	l.mu.Unlock()
	l.s.mu.Lock()
	delete(l.s.listeners, l)
	l.s.mu.Unlock()
	if rerr := a.releaseAll(keys); rerr != nil && err == nil && a.Err() == nil {
		err = rerr
	}
	return err
}

// tcpConn is gonet's TCPConn whose errors, once its attachment is gone,
// say why (ErrNexusGone, ErrClosed).
type tcpConn struct {
	*gonet.TCPConn
	a *attachment
}

// Read implements net.Conn.Read.
func (c *tcpConn) Read(b []byte) (int, error) {
	n, err := c.TCPConn.Read(b)
	return n, c.a.wrap(err)
}

// Write implements net.Conn.Write.
func (c *tcpConn) Write(b []byte) (int, error) {
	n, err := c.TCPConn.Write(b)
	return n, c.a.wrap(err)
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

// ListenPacket announces a UDP socket: network "udp", "udp4" or "udp6",
// address as for Listen. Its listener flow is registered before it can
// receive; each remote it sends to gets a 5-tuple flow, registered as the
// first datagram leaves (the flowswitch lets a listener flow send nothing
// but TCP resets). Close tears them all down.
func (s *Stack) ListenPacket(network, address string) (net.PacketConn, error) {
	a, err := s.live()
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	sp, err := a.parse("udp", network, address, true)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	b, err := a.bindRegistered(udp.ProtocolNumber, sp, "listen", network, func(port uint16) ([]packet.Key, flow.Kind) {
		return sp.listenKeys(packet.ProtoUDP, port)
	})
	if err != nil {
		return nil, err
	}
	return newUDPConn(a, b), nil
}

// udpConn is gonet's UDPConn with the socket's flows, a WriteTo that
// cannot miss its wake-up (see WriteTo), and errors that say why once its
// attachment is gone (ErrNexusGone, ErrClosed). It does not move to a new
// attachment: a re-attaching Stack's UDP sockets are gone with their nexus.
type udpConn struct {
	*gonet.UDPConn
	a    *attachment
	ep   tcpip.Endpoint
	wq   *waiter.Queue
	keys []packet.Key
	once sync.Once
	wdl  atomic.Int64 // write deadline in Unix nanoseconds; 0: none
}

func newUDPConn(a *attachment, b *bound) *udpConn {
	return &udpConn{UDPConn: gonet.NewUDPConn(b.wq, b.ep), a: a, ep: b.ep, wq: b.wq, keys: b.keys}
}

// Read implements net.Conn.Read.
func (c *udpConn) Read(b []byte) (int, error) {
	n, err := c.UDPConn.Read(b)
	return n, c.a.wrap(err)
}

// ReadFrom implements net.PacketConn.ReadFrom.
func (c *udpConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, addr, err := c.UDPConn.ReadFrom(b)
	return n, addr, c.a.wrap(err)
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
				return int(n), c.a.wrap(opError("write", "udp", addr, terr))
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
		case <-c.a.gone:
			return 0, &net.OpError{Op: "write", Net: "udp", Addr: addr, Err: c.a.Err()}
		}
	}
}

// Close closes the socket and tears down its flows.
func (c *udpConn) Close() error {
	err := c.UDPConn.Close()
	c.once.Do(func() {
		if rerr := c.a.releaseAll(c.keys); rerr != nil && err == nil && c.a.Err() == nil {
			err = rerr
		}
	})
	return err
}

func opError(op, network string, addr net.Addr, terr tcpip.Error) error {
	return &net.OpError{Op: op, Net: network, Addr: addr, Err: errors.New(terr.String())}
}
