package client

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet"
)

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
	c, err := a.listenPacket(sp, network)
	if err != nil {
		return nil, err
	}
	if !s.reattach {
		return c, nil
	}
	p := &packetListener{s: s, network: network, sp: sp, cur: c, done: make(chan struct{})}
	p.sp.port = c.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	if err := s.track(p, a); err != nil {
		c.Close()
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	return p, nil
}

// listenPacket binds a UDP socket on a as sp says and registers its
// listener flows, and takes their host sockets (udpHost).
func (a *attachment) listenPacket(sp endpointSpec, network string) (*udpConn, error) {
	b, err := a.bindRegistered(udp.ProtocolNumber, sp, "listen", network, func(port uint16) ([]packet.Key, flow.Kind) {
		return sp.listenKeys(packet.ProtoUDP, port)
	})
	if err != nil {
		return nil, err
	}
	socks, err := hostSockets(a, b.keys, fileUDPConn)
	if err != nil {
		b.ep.Close()
		a.releaseAll(b.keys)
		return nil, &net.OpError{Op: "listen", Net: network, Err: a.wrap(err)}
	}
	c := newUDPConn(a, b)
	c.host = newUDPHost(a, socks)
	return c, nil
}

// fileUDPConn is net.FilePacketConn for a UDP socket.
func fileUDPConn(f *os.File) (*net.UDPConn, error) {
	pc, err := net.FilePacketConn(f)
	if err != nil {
		return nil, err
	}
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return nil, fmt.Errorf("host socket is a %T, want a UDP socket", pc)
	}
	return uc, nil
}

// udpConn is gonet's UDPConn with the socket's flows, a WriteTo that
// cannot miss its wake-up (see WriteTo), and errors that say why once its
// attachment is gone (ErrNexusGone, ErrClosed). A listening one also
// serves the processes of the nexus's own host through its host sockets
// (host): ReadFrom returns their datagrams beside the user-space
// endpoint's, and WriteTo sends to this host's addresses through them. It
// lives and dies with its attachment; a packetListener moves from one to
// the next.
type udpConn struct {
	*gonet.UDPConn
	a    *attachment
	ep   tcpip.Endpoint
	wq   *waiter.Queue
	keys []packet.Key
	host *udpHost      // nil: none (dialled, or no kernel shares the device)
	rdl  *readDeadline // ReadFrom's, with host
	once sync.Once
	wdl  atomic.Int64 // write deadline in Unix nanoseconds; 0: none
}

func newUDPConn(a *attachment, b *bound) *udpConn {
	return &udpConn{UDPConn: gonet.NewUDPConn(b.wq, b.ep), a: a, ep: b.ep, wq: b.wq, keys: b.keys, rdl: newReadDeadline()}
}

// Read implements net.Conn.Read.
func (c *udpConn) Read(b []byte) (int, error) {
	if c.host != nil {
		n, _, err := c.ReadFrom(b)
		return n, err
	}
	n, err := c.UDPConn.Read(b)
	return n, c.a.wrap(err)
}

// ReadFrom implements net.PacketConn.ReadFrom.
func (c *udpConn) ReadFrom(b []byte) (int, net.Addr, error) {
	if c.host != nil {
		return c.readEither(b)
	}
	n, addr, err := c.UDPConn.ReadFrom(b)
	return n, addr, c.a.wrap(err)
}

// readEither reads the next datagram from the user-space endpoint or the
// host sockets (this host's processes), whichever has one first. As
// WriteTo, it registers for the endpoint's readable event, tries again,
// and only then waits.
func (c *udpConn) readEither(b []byte) (int, net.Addr, error) {
	var (
		entry waiter.Entry
		ready <-chan struct{}
		timer waitTimer
	)
	defer timer.stop()
	for {
		dl, changed := c.rdl.get()
		if !dl.IsZero() && !time.Now().Before(dl) {
			return 0, nil, &net.OpError{Op: "read", Net: "udp", Source: c.LocalAddr(), Err: os.ErrDeadlineExceeded}
		}
		select {
		case d := <-c.host.in:
			return copy(b, d.b), net.UDPAddrFromAddrPort(d.from), nil
		default:
		}
		w := tcpip.SliceWriter(b)
		res, terr := c.ep.Read(&w, tcpip.ReadOptions{NeedRemoteAddr: true})
		switch terr.(type) {
		case nil:
			return res.Count, &net.UDPAddr{IP: net.IP(res.RemoteAddr.Addr.AsSlice()), Port: int(res.RemoteAddr.Port)}, nil
		case *tcpip.ErrWouldBlock:
		case *tcpip.ErrClosedForReceive:
			return 0, nil, c.a.wrap(io.EOF) // as gonet's
		default:
			return 0, nil, c.a.wrap(opError("read", "udp", nil, terr))
		}
		if ready == nil {
			entry, ready = waiter.NewChannelEntry(waiter.ReadableEvents)
			c.wq.EventRegister(&entry)
			defer c.wq.EventUnregister(&entry)
			continue // try again: a datagram may have come before we registered
		}
		select {
		case <-ready:
		case d := <-c.host.in:
			return copy(b, d.b), net.UDPAddrFromAddrPort(d.from), nil
		case <-changed:
		case <-timer.at(dl):
		}
	}
}

// SetDeadline implements net.Conn.SetDeadline.
func (c *udpConn) SetDeadline(t time.Time) error {
	c.setWriteDeadline(t)
	c.rdl.set(t)
	return c.UDPConn.SetDeadline(t)
}

// SetReadDeadline implements net.Conn.SetReadDeadline.
func (c *udpConn) SetReadDeadline(t time.Time) error {
	c.rdl.set(t)
	return c.UDPConn.SetReadDeadline(t)
}

// SetWriteDeadline implements net.Conn.SetWriteDeadline.
func (c *udpConn) SetWriteDeadline(t time.Time) error {
	c.setWriteDeadline(t)
	return c.UDPConn.SetWriteDeadline(t)
}

func (c *udpConn) setWriteDeadline(t time.Time) {
	if c.host != nil {
		c.host.setWriteDeadline(t)
	}
	if t.IsZero() {
		c.wdl.Store(0)
	} else {
		c.wdl.Store(t.UnixNano())
	}
}

// Write implements net.Conn.Write.
func (c *udpConn) Write(b []byte) (int, error) { return c.WriteTo(b, nil) }

// WriteTo implements net.PacketConn.WriteTo. A datagram to an address of
// this host (the stack's own, or loopback) leaves through a host socket,
// if the conn has one of its family: the user-space stack cannot reach
// its own host over the wire. gonet's registers for the writable event
// only after a write would block and then waits without trying again, so
// a send-buffer release in between is lost and the writer hangs; here the
// endpoint releases queued packets from its own goroutine, which makes
// that window real. This loop registers, retries, and only then waits.
func (c *udpConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	var opts tcpip.WriteOptions
	if addr != nil {
		ua, ok := addr.(*net.UDPAddr)
		if !ok {
			return 0, &net.OpError{Op: "write", Net: "udp", Addr: addr, Err: fmt.Errorf("address %T is not a *net.UDPAddr", addr)}
		}
		if c.host != nil {
			to := ua.AddrPort()
			if s := c.host.sock(to.Addr()); s != nil {
				n, err := s.WriteToUDPAddrPort(b, netip.AddrPortFrom(to.Addr().Unmap(), to.Port()))
				return n, c.a.wrap(err)
			}
		}
		opts.To = &tcpip.FullAddress{Addr: tcpip.AddrFromSlice(ua.IP), Port: uint16(ua.Port)}
	}
	var (
		r     bytes.Reader
		entry waiter.Entry
		ready <-chan struct{}
		timer waitTimer
	)
	defer timer.stop()
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
			fire = timer.at(time.Unix(0, dl))
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
		if c.host != nil {
			c.host.close()
		}
		if rerr := c.a.releaseAll(c.keys); rerr != nil && err == nil && c.a.Err() == nil {
			err = rerr
		}
	})
	return err
}
