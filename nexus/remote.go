package nexus

import (
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet"
)

// RemotePort is the nexus's handle on a port whose app is in another
// process: package nexus/control opens one per app session and closes it
// when the session ends. The app end of its channel is not attached here;
// Send hands the channel's memory and eventfds to the app, and the worker
// is woken through the channel's eventfd by a port waiter goroutine (see
// the package doc). Register, Teardown and Close are Port's, and safe from
// any goroutine.
type RemotePort struct{ p *Port }

// OpenRemotePort makes a channel for a port whose app is in another
// process and adds it to the switch. The caller owns the RemotePort: it
// sends the channel to the app (Send) and must Close the port when the
// app goes, which tears its flows down.
func (n *Nexus) OpenRemotePort(name string, o PortOptions) (*RemotePort, error) {
	p, err := n.open(name, true, false, o)
	if err != nil {
		return nil, err
	}
	return &RemotePort{p: p}, nil
}

// Send passes the port's channel to the app at the other end of conn, as
// channel.Channel.Send does: its descriptor as JSON and its file
// descriptors as SCM_RIGHTS (the app attaches it with channel.Receive).
// The worker only duplicates the descriptors; the send happens on the
// caller's goroutine, so an app that does not read its socket stalls only
// its caller, never the datapath.
func (r *RemotePort) Send(conn *net.UnixConn) error {
	var (
		d   channel.Descriptor
		fds []int
	)
	err := r.p.n.do(func() error {
		q := r.p.n.ports[r.p.id]
		if q == nil {
			return ErrClosed
		}
		var err error
		d, fds, err = q.ch.Share()
		return err
	})
	if err != nil {
		return fmt.Errorf("port %s: send channel: %w", r.p.name, err)
	}
	if err := channel.SendShared(conn, d, fds); err != nil {
		return fmt.Errorf("port %s: %w", r.p.name, err)
	}
	return nil
}

// Name returns the port's channel name.
func (r *RemotePort) Name() string { return r.p.Name() }

// Addrs returns the addresses the port's flows may use locally.
func (r *RemotePort) Addrs() []netip.Addr { return r.p.Addrs() }

// MTU returns the largest IP packet the port may send.
func (r *RemotePort) MTU() int { return r.p.MTU() }

// Register is Port.Register: key and kind come from the app and are
// checked by the flow table.
func (r *RemotePort) Register(key packet.Key, kind flow.Kind) (channel.FlowInfo, error) {
	return r.p.Register(key, kind)
}

// HostListener is Port.HostListener: only the port's own flows' sockets.
func (r *RemotePort) HostListener(key packet.Key) (*os.File, error) { return r.p.HostListener(key) }

// Teardown is Port.Teardown: only the port's own flows can be torn down.
func (r *RemotePort) Teardown(key packet.Key) error { return r.p.Teardown(key) }

// RegisterBatch is Port.RegisterBatch: many flows in one request to the
// worker.
func (r *RemotePort) RegisterBatch(keys []packet.Key, kind flow.Kind) ([]channel.FlowInfo, []error) {
	return r.p.RegisterBatch(keys, kind)
}

// TeardownBatch is Port.TeardownBatch.
func (r *RemotePort) TeardownBatch(keys []packet.Key) []error { return r.p.TeardownBatch(keys) }

// Close tears down the port's flows and closes its channel (the app sees
// channel.ReasonClosed). Safe to call more than once.
func (r *RemotePort) Close() error { return r.p.Close() }
