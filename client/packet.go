package client

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// packetListener is a ListenPacket socket of a re-attaching Stack: a
// udpConn on the current attachment, replaced by one on the same port of
// the next attachment when the Stack re-attaches. Reads wait across the
// gap; writes in it fail (UDP may lose datagrams, and the app hears why).
type packetListener struct {
	s       *Stack        // immutable
	network string        // immutable
	done    chan struct{} // closed by Close

	mu       sync.Mutex
	sp       endpointSpec // the bound port, so a re-listen takes it again
	cur      *udpConn
	err      error     // re-listening on a new attachment failed
	rdl, wdl time.Time // deadlines as set, for the next socket
	closed   bool
}

var _ net.PacketConn = (*packetListener)(nil)

func (p *packetListener) current() (*udpConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return p.cur, net.ErrClosed
	}
	return p.cur, p.err
}

// relisten implements relistener: a socket on a, on the same port and
// with the same deadlines, replaces the old one.
func (p *packetListener) relisten(a *attachment) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.cur.a == a {
		return
	}
	c, err := a.listenPacket(p.sp, p.network)
	if err != nil {
		p.err = fmt.Errorf("client: listen again on port %d after the nexus came back: %w", p.sp.port, err)
		return
	}
	c.SetReadDeadline(p.rdl)
	c.SetWriteDeadline(p.wdl)
	p.cur = c
}

// ReadFrom implements net.PacketConn.ReadFrom. While the Stack has no
// nexus it waits for the next one (or the read deadline).
func (p *packetListener) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		c, err := p.current()
		if err != nil {
			return 0, nil, &net.OpError{Op: "read", Net: p.network, Source: c.LocalAddr(), Err: err}
		}
		n, addr, err := c.ReadFrom(b)
		if err == nil {
			return n, addr, nil
		}
		select {
		case <-p.done: // Close woke it
			return 0, nil, &net.OpError{Op: "read", Net: p.network, Source: c.LocalAddr(), Err: net.ErrClosed}
		default:
		}
		if werr := p.waitMove(c.a, err); werr != nil {
			return n, addr, werr
		}
	}
}

// waitMove waits, after a read on a failed with err, for the socket to
// move to the next attachment: nil to read again, or the error to return:
// err if there is nothing to wait for (a serves; the Stack closed), a
// timeout if the read deadline passes first.
func (p *packetListener) waitMove(a *attachment, err error) error {
	why := a.Err()
	if why == nil || errors.Is(why, ErrClosed) {
		return err
	}
	p.mu.Lock()
	dl := p.rdl
	p.mu.Unlock()
	var fire <-chan time.Time
	if !dl.IsZero() {
		t := time.NewTimer(time.Until(dl))
		defer t.Stop()
		fire = t.C
	}
	select {
	case <-a.replaced:
		return nil
	case <-p.done:
		return nil // the next round says closed
	case <-p.s.quit:
		return &net.OpError{Op: "read", Net: p.network, Err: ErrClosed}
	case <-fire:
		return &net.OpError{Op: "read", Net: p.network, Err: os.ErrDeadlineExceeded}
	}
}

// WriteTo implements net.PacketConn.WriteTo; while the Stack has no nexus
// it fails with ErrNexusGone.
func (p *packetListener) WriteTo(b []byte, addr net.Addr) (int, error) {
	c, err := p.current()
	if err != nil {
		return 0, &net.OpError{Op: "write", Net: p.network, Addr: addr, Err: err}
	}
	return c.WriteTo(b, addr)
}

// Close closes the socket and tears down its flows.
func (p *packetListener) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	c := p.cur
	p.mu.Unlock()
	p.s.untrack(p)
	return c.Close()
}

// LocalAddr implements net.PacketConn.LocalAddr.
func (p *packetListener) LocalAddr() net.Addr {
	c, _ := p.current()
	return c.LocalAddr()
}

// SetDeadline implements net.PacketConn.SetDeadline.
func (p *packetListener) SetDeadline(t time.Time) error {
	p.SetReadDeadline(t)
	return p.SetWriteDeadline(t)
}

// SetReadDeadline implements net.PacketConn.SetReadDeadline.
func (p *packetListener) SetReadDeadline(t time.Time) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rdl = t
	return p.cur.SetReadDeadline(t)
}

// SetWriteDeadline implements net.PacketConn.SetWriteDeadline.
func (p *packetListener) SetWriteDeadline(t time.Time) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.wdl = t
	return p.cur.SetWriteDeadline(t)
}
