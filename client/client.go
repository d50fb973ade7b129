package client

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/skylane/skylane/control"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/stack"
)

// Port is a nexus port as a Stack uses it: the endpoint's needs
// (stack.Port) plus the interface's addresses and MTU, and Close. A Port
// may also offer, and the Stack then uses:
//
//	Ephemeral() [2]uint16                        // the local ports its dials take
//	HostListener(packet.Key) (*os.File, error)   // a listener flow's kernel socket, for this host's connections or datagrams
//	Gone() <-chan struct{}; Err() error          // the nexus went
type Port interface {
	stack.Port
	// Name names the port (its channel).
	Name() string
	// Addrs returns the addresses the port's flows may use locally.
	Addrs() []netip.Addr
	// MTU returns the largest IP packet the port may send.
	MTU() int
	// Close tears down the port's flows and closes its channel.
	Close() error
}

// Nexus opens ports: the control interface between an app and a nexus.
// Connect returns one for a nexus in another process; package nexus/inproc
// one for a nexus in this process (the nexus side, which apps do not link).
type Nexus interface {
	OpenPort(name string) (Port, error)
}

// Defaults of Options.
const (
	// DefaultBufferSize is each TCP connection's default send and receive
	// buffer: large enough for the bandwidth-delay product of a user-space
	// path (10 Gbit/s × 100 µs = 125 KB) several times over, and moderated
	// (auto-tuned) up to MaxBufferSize for the receive side.
	DefaultBufferSize = 1 << 20
	// MaxBufferSize caps the buffers an application may set.
	MaxBufferSize = 8 << 20
)

// Options configures a Stack. The zero value is usable.
type Options struct {
	// Name names the stack's port (for the nexus's stats and memfds).
	Name string
	// BufferSize is the default TCP send and receive buffer; 0 means
	// DefaultBufferSize.
	BufferSize int
	// GSOMaxSize is passed to the endpoint (stack.Options.GSOMaxSize).
	GSOMaxSize int
	// TimeWait is how long closed TCP connections stay in TIME-WAIT in
	// netstack; 0 keeps netstack's default (60 s). Their flows are torn down
	// as they enter it.
	TimeWait time.Duration
	// BusyPoll is the endpoint's spin budget before it sleeps
	// (stack.Options.BusyPoll): lower latency for the CPU it burns; 0,
	// the default, sleeps at once.
	BusyPoll time.Duration
	// ChecksumOffload is passed to the endpoint
	// (stack.Options.ChecksumOffload): TCP and UDP checksums left to the
	// nexus, which completes them only for a device. Not for apps that
	// send UDP datagrams above the MTU (see there).
	ChecksumOffload bool
	// ResolvConf, if set, is the resolv.conf whose nameservers the
	// Stack's resolver asks instead of /etc/resolv.conf's (its other
	// settings are /etc/resolv.conf's: Go reads no other file). Hosts, if
	// set, is a hosts file Dial consults before any query, besides
	// /etc/hosts. See Resolver.
	ResolvConf, Hosts string
}

// Stack is a user-space TCP/IP stack on one nexus port. Its methods are
// safe for concurrent use.
//
// The port, its endpoint and the netstack on it are one attachment. When
// the nexus goes away (a Port with a Gone channel, as Connect's), a
// watcher goroutine tears the attachment down at once: every blocked and
// later Accept, Read, Write and Dial returns an error wrapping
// ErrNexusGone, and the attachment's memory, goroutines and descriptors
// are released. With ConnectOptions.Reattach the Stack then opens a new
// port whenever a nexus serves again, and registers its listeners (TCP
// listeners, ListenPacket sockets) on it: their Accept and ReadFrom go on;
// connections of the old attachment stay gone.
type Stack struct {
	nx       Nexus           // immutable
	opts     Options         // immutable, defaults applied
	reattach bool            // immutable: re-open a port when the nexus went
	notify   func(err error) // immutable: ConnectOptions.Notify, or nil
	res      *resolver       // immutable: names (resolve.go)

	quit    chan struct{}  // closed by Close: stops the watcher
	watcher sync.WaitGroup // the watcher goroutine, if the port can go

	mu        sync.Mutex
	cur       *attachment             // never nil; dead once gone, until re-attached
	listeners map[relistener]struct{} // open listeners, registered again on re-attach
	closed    bool
}

const nicID tcpip.NICID = 1

// New opens a port on nx and builds a netstack on it: IPv4 and IPv6, TCP
// and UDP, the port's addresses, a default route per family.
func New(nx Nexus, opts Options) (*Stack, error) {
	if nx == nil {
		return nil, fmt.Errorf("client: no nexus: pass client.Connect(socket), or inproc.Nexus(n) for a nexus in this process")
	}
	if opts.BufferSize < 0 || opts.BufferSize > MaxBufferSize {
		return nil, fmt.Errorf("client: buffer size %d outside 0..%d", opts.BufferSize, MaxBufferSize)
	}
	if opts.TimeWait < 0 {
		return nil, fmt.Errorf("client: negative TIME-WAIT %v", opts.TimeWait)
	}
	if opts.BufferSize == 0 {
		opts.BufferSize = DefaultBufferSize
	}
	if opts.Name == "" {
		opts.Name = "stack"
	}
	s := &Stack{nx: nx, opts: opts, quit: make(chan struct{}), listeners: make(map[relistener]struct{})}
	var err error
	if s.res, err = newResolver(s, opts); err != nil {
		return nil, err
	}
	if r, ok := nx.(interface{ connectOptions() ConnectOptions }); ok {
		co := r.connectOptions()
		s.reattach, s.notify = co.Reattach, co.Notify
	}
	a, err := s.attach()
	if err != nil {
		return nil, err
	}
	s.cur = a
	if a.portGone != nil {
		s.watcher.Add(1)
		go s.watch(a)
	}
	return s, nil
}

// attach opens a port on the nexus and builds a netstack on it.
func (s *Stack) attach() (_ *attachment, err error) {
	port, err := s.nx.OpenPort(s.opts.Name)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	a := &attachment{port: port, nic: nicID, addrs: port.Addrs(), gone: make(chan struct{}), replaced: make(chan struct{})}
	if g, ok := port.(interface{ Gone() <-chan struct{} }); ok {
		a.portGone = g.Gone()
	}
	defer func() {
		if err != nil {
			if a.ns != nil {
				a.ns.Close()
			}
			if a.ep != nil {
				a.ep.Stop()
			}
			if a.ns != nil {
				a.ns.Wait()
			}
			port.Close()
		}
	}()
	opts := s.opts
	a.ns = gstack.New(gstack.Options{
		NetworkProtocols: []gstack.NetworkProtocolFactory{
			ipv4.NewProtocol,
			// No duplicate address detection: the nexus owns the
			// interface's addresses, and DAD would hold them tentative
			// for a second while its probes go nowhere.
			ipv6.NewProtocolWithOptions(ipv6.Options{DADConfigs: gstack.DADConfigurations{DupAddrDetectTransmits: 0}}),
		},
		TransportProtocols: []gstack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	for _, o := range []tcpip.SettableTransportProtocolOption{
		ptr(tcpip.TCPSACKEnabled(true)),
		ptr(tcpip.TCPModerateReceiveBufferOption(true)),
		// Loss recovery by SACK (RFC 6675) and the retransmission timer,
		// without RACK and its tail loss probes: see the package doc.
		ptr(tcpip.TCPRecovery(0)),
		&tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: opts.BufferSize, Max: MaxBufferSize},
		&tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: opts.BufferSize, Max: MaxBufferSize},
	} {
		if terr := a.ns.SetTransportProtocolOption(tcp.ProtocolNumber, o); terr != nil {
			return nil, fmt.Errorf("client: tcp option %T: %s", o, terr)
		}
	}
	// Outgoing connections take local ports from the range the nexus
	// allows (a remote nexus refuses others).
	if e, ok := port.(interface{ Ephemeral() [2]uint16 }); ok && e.Ephemeral()[0] != 0 {
		r := e.Ephemeral()
		if terr := a.ns.SetPortRange(r[0], r[1]); terr != nil {
			return nil, fmt.Errorf("client: ephemeral ports %d-%d from the nexus: %s", r[0], r[1], terr)
		}
	}
	if opts.TimeWait > 0 {
		tw := tcpip.TCPTimeWaitTimeoutOption(opts.TimeWait)
		if terr := a.ns.SetTransportProtocolOption(tcp.ProtocolNumber, &tw); terr != nil {
			return nil, fmt.Errorf("client: tcp TIME-WAIT: %s", terr)
		}
	}
	a.ep, err = stack.New(stack.Options{Port: port, MTU: port.MTU(), GSOMaxSize: opts.GSOMaxSize, Alive: a.alive, Refuse: a.refuse, Handshaking: a.handshaking, BusyPoll: opts.BusyPoll, ChecksumOffload: opts.ChecksumOffload})
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	if terr := a.ns.CreateNICWithOptions(a.nic, a.ep, gstack.NICOptions{Name: port.Name()}); terr != nil {
		return nil, fmt.Errorf("client: create NIC: %s", terr)
	}
	var routes []tcpip.Route
	for _, ad := range a.addrs {
		pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpAddr(ad).WithPrefix()}
		dst := header.IPv4EmptySubnet
		if !ad.Is4() {
			pa.Protocol, dst = ipv6.ProtocolNumber, header.IPv6EmptySubnet
		}
		if terr := a.ns.AddProtocolAddress(a.nic, pa, gstack.AddressProperties{}); terr != nil {
			return nil, fmt.Errorf("client: add address %v: %s", ad, terr)
		}
		if !hasRoute(routes, dst) {
			routes = append(routes, tcpip.Route{Destination: dst, NIC: a.nic})
		}
	}
	a.ns.SetRouteTable(routes)
	return a, nil
}

func ptr[T any](v T) *T { return &v }

func hasRoute(rs []tcpip.Route, dst tcpip.Subnet) bool {
	for _, r := range rs {
		if r.Destination == dst {
			return true
		}
	}
	return false
}

// ErrClosed is returned by the Stack's methods after Close.
var ErrClosed = errors.New("client: stack closed")

// Errors of the nexus that apps test with errors.Is, whether their nexus
// runs in this process or in another (they are the contract's, package
// control).
var (
	// ErrNotPermitted: the nexus's policy refused the request for this
	// app's credentials (a port, an address, a dial, a limit); the error
	// text says what and which rule would allow it.
	ErrNotPermitted = control.ErrNotPermitted
	// ErrNexusGone: the nexus exited or was killed. Blocked and later
	// Accept, Read, Write and Dial of the Stack return an error wrapping
	// it, and the Stack releases its memory, goroutines and descriptors.
	ErrNexusGone = control.ErrNexusGone
	// ErrTooManyFlows: the nexus's limits refused a flow (the app's port,
	// or the nexus, holds as many as it may). An accepted connection
	// refused so is reset (its peer gets a RST) and Accept returns a
	// temporary error wrapping this one; a Dial or Listen fails with it.
	ErrTooManyFlows = control.ErrTooManyFlows
)

// Close aborts every connection (their peers get a reset), tears down
// every flow, stops the endpoint and netstack's goroutines and closes the
// port; a re-attaching Stack stops waiting for its nexus. Safe to call
// more than once.
func (s *Stack) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.quit)
	s.watcher.Wait()
	// The watcher is gone: cur is final.
	return s.cur.teardown(ErrClosed)
}

// live returns the current attachment if it serves: else ErrClosed after
// Close, or why the nexus went (wrapping ErrNexusGone).
func (s *Stack) live() (*attachment, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if err := s.cur.Err(); err != nil {
		return nil, err
	}
	return s.cur, nil
}

func (s *Stack) current() *attachment {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// Addrs returns the stack's local addresses (its current port's).
func (s *Stack) Addrs() []netip.Addr { return append([]netip.Addr(nil), s.current().addrs...) }

// Endpoint returns the stack's link endpoint, for its statistics. After a
// re-attach it is the new port's.
func (s *Stack) Endpoint() *stack.Endpoint { return s.current().ep }

// Netstack returns the gVisor stack, for its statistics and options. After
// a re-attach it is the new port's.
func (s *Stack) Netstack() *gstack.Stack { return s.current().ns }

// findTCP returns netstack's endpoint for the TCP 5-tuple k (oriented to
// the local side), which may be the listener that would take a new
// connection, or nil.
func (a *attachment) findTCP(k packet.Key) gstack.TransportEndpoint {
	la, ra := k.LocalAddrPort(), k.RemoteAddrPort()
	id := gstack.TransportEndpointID{
		LocalPort: la.Port(), LocalAddress: tcpAddr(la.Addr()),
		RemotePort: ra.Port(), RemoteAddress: tcpAddr(ra.Addr()),
	}
	np := ipv4.ProtocolNumber
	if k.Version == 6 {
		np = ipv6.ProtocolNumber
	}
	return a.ns.FindTransportEndpoint(np, tcp.ProtocolNumber, id, a.nic)
}

// epState returns the state of netstack's endpoint ep, if it says. It
// reads only the endpoint's state word, so it never waits for a
// connection's lock.
func epState(ep gstack.TransportEndpoint) (tcp.EndpointState, bool) {
	if ep == nil {
		return 0, false
	}
	st, ok := ep.(interface{ State() uint32 })
	if !ok {
		return 0, false
	}
	return tcp.EndpointState(st.State()), true
}

// alive reports whether netstack has a live connection for the TCP 5-tuple
// k: found (not the listener that would take a new one), not closed, not in
// TIME-WAIT. It reads only the demultiplexer and the state word.
func (a *attachment) alive(k packet.Key) bool {
	ep := a.findTCP(k)
	if ep == nil {
		return false
	}
	st, ok := epState(ep)
	if !ok {
		return true
	}
	switch st {
	case tcp.StateListen, tcp.StateTimeWait, tcp.StateClose, tcp.StateError:
		return false
	}
	return true
}

// handshaking reports whether netstack's connection of the TCP 5-tuple k is
// in its handshake (stack.Options.Handshaking).
func (a *attachment) handshaking(k packet.Key) bool {
	st, ok := epState(a.findTCP(k))
	return ok && st == tcp.StateSynRecv
}

// refuse resets the TCP connection of k, whose flow the nexus refused
// (stack.Options.Refuse): its peer gets a RST, which leaves on the
// listener's flow. The listener itself is never aborted.
func (a *attachment) refuse(k packet.Key, _ error) {
	if k.Proto != packet.ProtoTCP {
		return // a UDP reply: dropped and counted by the endpoint
	}
	ep := a.findTCP(k)
	if st, ok := epState(ep); ep == nil || (ok && st == tcp.StateListen) {
		return
	}
	ep.Abort()
}

func tcpAddr(a netip.Addr) tcpip.Address {
	if a.Is4() {
		return tcpip.AddrFrom4(a.As4())
	}
	return tcpip.AddrFrom16(a.As16())
}
