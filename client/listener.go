package client

import (
	"errors"
	"fmt"
	"net"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet"
)

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
	if err := s.track(l, a); err != nil {
		l.Close()
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
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
	ep     tcpip.Endpoint // inner's, for the accept-ahead
	keys   []packet.Key
	err    error // re-listening on a new attachment failed
	closed bool

	// ahead are connections taken from netstack before Accept returned
	// them, oldest first, each with its flow being registered; guarded
	// by qmu (never held with mu).
	qmu   sync.Mutex
	ahead []acceptedConn
}

// acceptAhead bounds the connections Accept takes from netstack ahead of
// the one it returns: it starts registering all of their flows at once, so
// the stack registers them in one batch, and it empties netstack's accept
// queue (listenBacklog) while it waits for the nexus.
const acceptAhead = 256

type acceptedConn struct {
	c    *gonet.TCPConn
	a    *attachment
	wait func() error // the connection's flow is registered (stack.Endpoint.Prepare)
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
	l.a, l.inner, l.ep, l.keys = a, gonet.NewTCPListener(a.ns, b.wq, b.ep), b.ep, b.keys
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
		l.err = fmt.Errorf("client: listen again on port %d after the nexus came back: %w", l.sp.port, err)
	}
}

// Accept implements net.Listener.Accept. When the nexus goes, it returns
// an error wrapping ErrNexusGone, or on a re-attaching Stack waits for
// the listener to be registered on the next nexus.
func (l *listener) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		a, inner, ep, closed, rerr := l.a, l.inner, l.ep, l.closed, l.err
		l.mu.Unlock()
		if closed {
			return nil, &net.OpError{Op: "accept", Net: l.network, Addr: inner.Addr(), Err: net.ErrClosed}
		}
		if rerr != nil {
			return nil, &net.OpError{Op: "accept", Net: l.network, Addr: inner.Addr(), Err: rerr}
		}
		if c, ok, err := l.next(a, ep); ok {
			return c, err
		}
		c, err := inner.Accept()
		if err == nil {
			l.queue(c.(*gonet.TCPConn), a)
			continue
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

// queue takes c, just accepted on a, into the accept-ahead and starts
// registering its flow.
func (l *listener) queue(c *gonet.TCPConn, a *attachment) {
	la, ra := c.LocalAddr().(*net.TCPAddr), c.RemoteAddr().(*net.TCPAddr)
	ac := acceptedConn{c: c, a: a, wait: a.ep.Prepare(packet.MakeKey(packet.ProtoTCP, la.AddrPort(), ra.AddrPort()))}
	l.qmu.Lock()
	l.ahead = append(l.ahead, ac)
	l.qmu.Unlock()
}

// next takes what netstack has accepted on a (ep, without waiting) into
// the accept-ahead, up to acceptAhead, then returns the oldest connection
// once its flow is registered, or a temporary error wrapping why the
// nexus refused it (the peer was reset). ok is false when the accept-ahead
// is empty.
func (l *listener) next(a *attachment, ep tcpip.Endpoint) (_ net.Conn, ok bool, _ error) {
	for {
		l.qmu.Lock()
		n := len(l.ahead)
		l.qmu.Unlock()
		if n >= acceptAhead {
			break
		}
		ne, wq, terr := ep.Accept(nil)
		if terr != nil {
			break // none waiting (or closed: the blocking Accept says)
		}
		l.queue(gonet.NewTCPConn(wq, ne), a)
	}
	l.qmu.Lock()
	if len(l.ahead) == 0 {
		l.qmu.Unlock()
		return nil, false, nil
	}
	ac := l.ahead[0]
	l.ahead[0] = acceptedConn{}
	l.ahead = l.ahead[1:]
	l.qmu.Unlock()
	if err := ac.wait(); err != nil {
		ac.c.Close()
		return nil, true, &net.OpError{Op: "accept", Net: l.network, Addr: ac.c.LocalAddr(), Err: &refusedError{err}}
	}
	return &tcpConn{TCPConn: ac.c, a: ac.a}, true, nil
}

// refusedError is a connection the nexus refused: a temporary error, as
// net/http's Serve expects of a transient failure of Accept.
type refusedError struct{ err error }

func (e *refusedError) Error() string {
	return "connection refused by the nexus and reset: " + e.err.Error()
}
func (e *refusedError) Unwrap() error   { return e.err }
func (e *refusedError) Temporary() bool { return true }
func (e *refusedError) Timeout() bool   { return false }

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
	l.qmu.Lock()
	for _, ac := range l.ahead {
		ac.c.Close() // taken from netstack, never returned
	}
	l.ahead = nil
	l.qmu.Unlock()
	l.s.untrack(l)
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
