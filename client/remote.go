package client

import (
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/control"
)

// backlogPoll bounds a Wait after the endpoint kicked (it sent, freed, or
// ran short of buffers): the nexus signals the app's eventfd for RX
// packets and events only, not for room on the TX ring or buffers, so an
// endpoint with packets waiting for either looks again this soon. An idle
// endpoint's next Wait (no kick since) sleeps until signalled.
const backlogPoll = 500 * time.Microsecond

// Connect returns the Nexus interface of a nexus in another process that
// serves its control socket at path (`skylane nexus --socket PATH`). Each
// OpenPort is one session on that socket: the port lives as long as the
// session, and the nexus closes it, tearing its flows down, when this
// process closes it or exits. It is ConnectWith(path, ConnectOptions{}).
func Connect(path string) (Nexus, error) { return ConnectWith(path, ConnectOptions{}) }

// ConnectOptions configure Connect.
type ConnectOptions struct {
	// Reattach makes a Stack on this nexus outlive it: when the nexus
	// goes, the Stack's connections (TCP, and UDP from Dial) fail with
	// ErrNexusGone as ever, but the Stack retries (every second at most)
	// until a nexus serves the socket again, opens a new port there and
	// registers its listeners (TCP listeners, ListenPacket sockets) on it
	// again, on the same ports. Meanwhile their Accept and ReadFrom wait
	// (deadlines still apply), a ListenPacket socket's WriteTo fails with
	// ErrNexusGone, and Listen, Dial and ListenPacket fail.
	Reattach bool
	// Notify, if set, is called from the Stack's watcher goroutine when
	// the Stack loses its nexus (with why, wrapping ErrNexusGone) and,
	// with Reattach, when it has attached again (with nil). It must not
	// block for long: re-attaching waits for it.
	Notify func(err error)
}

// ConnectWith is Connect with options.
func ConnectWith(path string, o ConnectOptions) (Nexus, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("client: connect: %w", err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return nil, fmt.Errorf("client: connect: %s is not a socket: give the path the nexus serves (skylane nexus --socket)", path)
	}
	return remoteNexus{path: path, o: o}, nil
}

type remoteNexus struct {
	path string
	o    ConnectOptions
}

// connectOptions tells New how a Stack on r lives (re-attach, notify).
func (r remoteNexus) connectOptions() ConnectOptions { return r.o }

// OpenPort opens a port honouring flow advisories (a Stack's endpoint
// does) over a new control session.
func (r remoteNexus) OpenPort(name string) (Port, error) {
	s, err := control.Open(r.path, name, control.OpenOptions{Advisories: true})
	if err != nil {
		return nil, err
	}
	return &remotePort{Session: s}, nil
}

// remotePort is a Port whose nexus is in another process: requests go over
// the control session, wake-ups through the channel's eventfds.
type remotePort struct {
	*control.Session
	kicked atomic.Bool // Kick since the last Wait: the endpoint may have a backlog
}

var _ Port = (*remotePort)(nil)

// Wait implements stack.Port.Wait: check runs first, then the app sleeps
// in channel.App.WaitFor on the RX and event rings, which arms their
// need-wakeup flags and looks at them again before it sleeps, so a packet
// or event that came after check is not missed. After a Kick the sleep is
// at most backlogPoll (see there). A closed channel is an error, and so
// is the end of the session (ErrNexusGone): the session interrupts the
// wait when it ends.
func (p *remotePort) Wait(check func() bool, timeout time.Duration) error {
	if err := p.Err(); err != nil {
		return err
	}
	if check() {
		return nil
	}
	if p.kicked.Swap(false) && (timeout == 0 || timeout > backlogPoll) {
		timeout = backlogPoll
	}
	if _, err := p.App().WaitFor(channel.WaitRX|channel.WaitEvents, timeout); err != nil {
		return err
	}
	return p.Err()
}

// Wake implements stack.Port.Wake: channel.App.Interrupt.
func (p *remotePort) Wake() { p.App().Interrupt() }

// Kick implements stack.Port.Kick. The channel kicks the nexus by itself
// (App.Send, Free and Alloc signal its eventfd when the nexus sleeps); the
// port only notes that the endpoint may be waiting for TX room or buffers.
func (p *remotePort) Kick() { p.kicked.Store(true) }
