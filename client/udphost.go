package client

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// udpHost is how processes on the nexus's own host exchange datagrams with
// a listening udpConn at the interface's address: their datagrams go
// through the kernel's loopback, never the device, so the user-space stack
// never sees them, and the stack cannot reach its own address over the
// wire either. The nexus's reservations of the conn's listener flows are
// kernel sockets that receive only what came in on loopback (their locked
// filter); the conn gets a duplicate of each (hostSockets), reads them
// beside its user-space endpoint and answers this host through them.
//
// Its reader goroutines, one per socket, are owned by the udpHost: close,
// or the attachment going, closes the sockets, which ends them.
type udpHost struct {
	socks []*net.UDPConn // the reservations' duplicates, IPv4 and/or IPv6
	own   []netip.Addr   // immutable: the stack's addresses (the attachment's)
	in    chan hostDatagram
	done  chan struct{} // closed by close
	once  sync.Once
	wg    sync.WaitGroup
}

// hostDatagram is one datagram a process on this host sent.
type hostDatagram struct {
	b    []byte
	from netip.AddrPort
}

// hostAhead bounds the datagrams read from the host sockets ahead of
// ReadFrom; past it the kernel's socket buffer holds them, and drops what
// overflows it, as for any UDP socket.
const hostAhead = 16

// newUDPHost starts serving socks, the host sockets of a conn's listener
// flows on attachment a; nil when there are none (no kernel shares the
// nexus's device).
func newUDPHost(a *attachment, socks []*net.UDPConn) *udpHost {
	if len(socks) == 0 {
		return nil
	}
	h := &udpHost{socks: socks, own: a.addrs, in: make(chan hostDatagram, hostAhead), done: make(chan struct{})}
	for _, s := range socks {
		h.wg.Add(1)
		go h.read(s)
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		select {
		case <-h.done:
		case <-a.gone:
		}
		for _, s := range h.socks {
			s.Close()
		}
	}()
	return h
}

// read takes s's datagrams into in until s is closed.
func (h *udpHost) read(s *net.UDPConn) {
	defer h.wg.Done()
	buf := make([]byte, 1<<16)
	for {
		n, from, err := s.ReadFromUDPAddrPort(buf)
		if err != nil {
			return // closed (it has no read deadline)
		}
		select {
		case h.in <- hostDatagram{b: append([]byte(nil), buf[:n]...), from: from}:
		case <-h.done:
			return
		}
	}
}

// sock returns the host socket that reaches to, when to is an address of
// this host (the stack's own, or loopback) and a socket of its family
// exists; nil: to is for the user-space stack to reach.
func (h *udpHost) sock(to netip.Addr) *net.UDPConn {
	to = to.Unmap()
	local := to.IsLoopback()
	for _, a := range h.own {
		if a.Unmap().WithZone("") == to.WithZone("") {
			local = true
		}
	}
	if !local {
		return nil
	}
	for _, s := range h.socks {
		la := s.LocalAddr().(*net.UDPAddr).AddrPort().Addr()
		if la.Unmap().Is4() == to.Is4() {
			return s
		}
	}
	return nil
}

func (h *udpHost) setWriteDeadline(t time.Time) {
	for _, s := range h.socks {
		s.SetWriteDeadline(t)
	}
}

// close closes the sockets and waits for the readers.
func (h *udpHost) close() {
	h.once.Do(func() { close(h.done) })
	h.wg.Wait()
}

// readDeadline is a read deadline that wakes the readers waiting on it
// whenever it changes, so that each sees the new one.
type readDeadline struct {
	mu      sync.Mutex
	t       time.Time
	changed chan struct{} // closed, and replaced, by set
}

func newReadDeadline() *readDeadline { return &readDeadline{changed: make(chan struct{})} }

func (d *readDeadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.t = t
	close(d.changed)
	d.changed = make(chan struct{})
}

func (d *readDeadline) get() (time.Time, <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.t, d.changed
}

// waitTimer is the timer of a wait loop's deadline, reused from one round
// to the next; stop it when the loop ends.
type waitTimer struct{ t *time.Timer }

// at returns a channel that fires at dl, or nil (never) for the zero time.
func (w *waitTimer) at(dl time.Time) <-chan time.Time {
	if dl.IsZero() {
		return nil
	}
	if w.t == nil {
		w.t = time.NewTimer(time.Until(dl))
	} else {
		w.t.Reset(time.Until(dl))
	}
	return w.t.C
}

func (w *waitTimer) stop() {
	if w.t != nil {
		w.t.Stop()
	}
}
