package client

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

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
	l := &listener{s: s, network: network, sp: sp, done: make(chan struct{}), ready: make(chan acceptedConn, acceptAhead)}
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
	keys   []packet.Key
	err    error // re-listening on a new attachment failed
	closed bool

	// ready holds the connections the drain goroutines took from netstack
	// ahead of Accept, oldest first, each with its flow being registered,
	// and, last from a netstack listener, why its Accept failed.
	ready  chan acceptedConn
	drains sync.WaitGroup // one drain goroutine per netstack listener
}

// acceptAhead bounds the connections taken from netstack ahead of Accept.
// A drain goroutine per netstack listener (owned by the listener: Close,
// or the listener's attachment ending, stops it) takes each connection as
// its handshake completes and starts registering its flow, so the flows of
// a burst of connections are registered in batches while the app's Accept
// waits for the oldest, and netstack's accept queue (listenBacklog) is
// emptied all the while: a connection completed with a SYN cookie while
// that queue is full is lost until its client sends data.
const acceptAhead = 256

type acceptedConn struct {
	c    *gonet.TCPConn
	kc   net.Conn // instead of c: a kernel connection from a process on the nexus's host
	a    *attachment
	wait func() error // the connection's flow is registered (stack.Endpoint.Prepare)
	err  error        // instead of c: the netstack listener's Accept failed
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
	hosts, err := a.hostListeners(b.keys)
	if err != nil {
		b.ep.Close()
		a.releaseAll(b.keys)
		return &net.OpError{Op: "listen", Net: l.network, Err: a.wrap(err)}
	}
	l.sp.port = b.port
	l.a, l.inner, l.keys = a, gonet.NewTCPListener(a.ns, b.wq, b.ep), b.keys
	l.drains.Add(1)
	go l.drain(l.inner, a)
	for _, hl := range hosts {
		l.drains.Add(2)
		stop := make(chan struct{})
		go l.hostDrain(hl, a, stop)
		go func() {
			// hl's owner: closed when the listener closes, its
			// attachment goes, or its reservation ended hostDrain.
			defer l.drains.Done()
			select {
			case <-l.done:
			case <-a.gone:
			case <-stop:
			}
			hl.Close()
		}()
	}
	return nil
}

// hostListeners returns the kernel's listeners that reserve keys for the
// app at the nexus, through which processes on the nexus's own host
// connect to the listener (see hostSockets).
func (a *attachment) hostListeners(keys []packet.Key) ([]net.Listener, error) {
	return hostSockets(a, keys, net.FileListener)
}

// hostSockets returns the kernel sockets that reserve keys for the app at
// the nexus (the nexus's HostListener), each made a listener or packet
// conn by open (which duplicates the file it is given): through them
// processes on the nexus's own host reach the app, as their packets never
// cross the device, so the user-space stack never sees them. None when
// the nexus has no kernel sharing its device.
func hostSockets[T io.Closer](a *attachment, keys []packet.Key, open func(*os.File) (T, error)) ([]T, error) {
	hp, ok := a.port.(interface {
		HostListener(packet.Key) (*os.File, error)
	})
	if !ok {
		return nil, nil
	}
	var socks []T
	for _, k := range keys {
		f, err := hp.HostListener(k)
		if err == nil && f != nil {
			var s T
			s, err = open(f) // a duplicate of f
			f.Close()
			if err == nil {
				socks = append(socks, s)
			}
		}
		if err != nil {
			for _, s := range socks {
				s.Close()
			}
			return nil, fmt.Errorf("host socket for %v: %w", k, err)
		}
	}
	return socks, nil
}

// hostDrain takes the connections of hl, a host listener of attachment a,
// into ready until hl fails: closed by its owner (see listenOn), or shut
// down by the nexus when the flow went. Running out of descriptors only
// pauses it.
func (l *listener) hostDrain(hl net.Listener, a *attachment, stop chan struct{}) {
	defer l.drains.Done()
	defer close(stop)
	pause := time.Millisecond
	for {
		c, err := hl.Accept()
		if err != nil {
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ECONNABORTED) {
				select { // as net/http's Serve backs off
				case <-time.After(pause):
					pause = min(2*pause, time.Second)
					continue
				case <-l.done:
				case <-a.gone:
				}
			}
			return
		}
		pause = time.Millisecond
		select {
		case l.ready <- acceptedConn{kc: c, a: a}:
		case <-l.done:
			c.Close()
			return
		}
	}
}

// drain takes inner's connections, on attachment a, into ready until
// inner's Accept fails (closed, or a gone), which it passes on last.
func (l *listener) drain(inner *gonet.TCPListener, a *attachment) {
	defer l.drains.Done()
	for {
		var ac acceptedConn
		c, err := inner.Accept()
		if err != nil {
			ac = acceptedConn{a: a, err: err}
		} else {
			tc := c.(*gonet.TCPConn)
			la, lok := tc.LocalAddr().(*net.TCPAddr)
			ra, rok := tc.RemoteAddr().(*net.TCPAddr)
			if !lok || !rok {
				// Reset by its peer (or refused) between netstack's
				// accept and here: netstack no longer knows its
				// addresses, and it has no flow to register. It is
				// gone already; so is it for the app.
				tc.Close()
				continue
			}
			ac = acceptedConn{c: tc, a: a, wait: a.ep.Prepare(packet.MakeKey(packet.ProtoTCP, la.AddrPort(), ra.AddrPort()))}
		}
		select {
		case l.ready <- ac:
		case <-l.done:
			if ac.c != nil {
				ac.c.Close()
			}
			return
		}
		if err != nil {
			return
		}
	}
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
		inner, closed, rerr := l.inner, l.closed, l.err
		l.mu.Unlock()
		if closed {
			return nil, &net.OpError{Op: "accept", Net: l.network, Addr: inner.Addr(), Err: net.ErrClosed}
		}
		if rerr != nil {
			return nil, &net.OpError{Op: "accept", Net: l.network, Addr: inner.Addr(), Err: rerr}
		}
		var ac acceptedConn
		select {
		case ac = <-l.ready:
		case <-l.done: // Close woke it
			return nil, &net.OpError{Op: "accept", Net: l.network, Addr: inner.Addr(), Err: net.ErrClosed}
		}
		if ac.kc != nil {
			return ac.kc, nil
		}
		if ac.err == nil {
			if err := ac.wait(); err != nil {
				// Refused by the nexus (its peer reset), or the
				// attachment went before the flow was registered.
				ac.c.Close()
				return nil, &net.OpError{Op: "accept", Net: l.network, Addr: ac.c.LocalAddr(), Err: &refusedError{err}}
			}
			return &tcpConn{TCPConn: ac.c, a: ac.a}, nil
		}
		a, err := ac.a, ac.err
		gerr := a.Err()
		if gerr == nil {
			// Its drain has ended: later Accepts fail the same way.
			l.mu.Lock()
			if l.err == nil && l.a == a {
				l.err = err
			}
			l.mu.Unlock()
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
	l.drains.Wait() // their netstack listeners are closed, or l.done stops them
	for {
		select {
		case ac := <-l.ready:
			if ac.c != nil {
				ac.c.Close() // taken from netstack, never returned
			}
			if ac.kc != nil {
				ac.kc.Close()
			}
			continue
		default:
		}
		break
	}
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
