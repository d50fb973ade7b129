package nexus

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/control"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/pool"
)

// Defaults of Options.
const (
	// DefaultReapInterval is how often the worker runs each channel's
	// reaper (idle pool segments back to the OS, docs/design.md §2).
	DefaultReapInterval = time.Second
	// DefaultBufferSize is the port channels' buffer size: a TCP super
	// packet of flowswitch.DefaultMergeLimit (16 KiB) fills one buffer, so
	// merging is never cut short by the buffer (pool.MaxBufferSize).
	DefaultBufferSize = pool.MaxBufferSize
	// DefaultSegmentSize keeps pool.DefaultSegmentSize's 16 buffers per
	// segment at DefaultBufferSize: the pool grows and reaps 16 buffers at
	// a time, not 2, so a burst does not grow it segment by segment.
	DefaultSegmentSize = 16 * DefaultBufferSize
	// DefaultMaxSegments caps a port's pool at 128 segments of 256 KiB:
	// 32 MiB, 2048 buffers of 16 KiB, enough to fill the default RX ring
	// (1024) plus the TX, alloc and free rings twice over. Pools start at one
	// segment and grow on demand, so an idle port costs 256 KiB.
	DefaultMaxSegments = 128
)

// ErrClosed is returned by every request once the nexus (or the port) is
// closed. It is the contract's control.ErrClosed, so an app tells it by
// errors.Is in this process and in another; it is also
// control.ErrNexusGone.
var ErrClosed = control.ErrClosed

// Options configures a Nexus.
type Options struct {
	// Link is the device. The nexus owns it once New returns without
	// error: it is its only reader and writer, and Close closes it. On
	// error the caller keeps it. Switch.HostLink, if set, is owned the
	// same way.
	Link netif.Link
	// Addrs are the interface's addresses: flows may only have one of them
	// as their local address, and apps learn them from Port.Addrs.
	Addrs []netip.Addr
	// Switch configures the flowswitch (batch sizes, merge limit, MACs,
	// advisory slots, host link, TX queue, regulation, PortTaken: give it
	// the kernel's sockets, e.g. drivers.KernelPorts.Taken, when a kernel
	// stack shares the device, so that listeners on their ports are
	// refused). Its Link and
	// LocalAddrs are set from the fields above and must be left zero. A
	// TxQueue is flushed once per round; the worker does not wake for
	// packets it holds back (see the package doc). The switch's timed work
	// (Regulation's paced queue and held receive batches, neighbour
	// resolution, stall checks) runs every round, and the parked worker
	// wakes when the switch says it is due. IdleWait 0 means the switch
	// has no idle timer of its own here: the worker wakes for the links,
	// the apps and that timed work.
	Switch flowswitch.Options
	// Channel is the template of every port's channel. Zero fields take
	// channel's defaults, except the pool's BufferSize (DefaultBufferSize),
	// SegmentSize (DefaultSegmentSize with the default buffer size) and
	// MaxSegments (DefaultMaxSegments), and Advisories, which is the
	// switch's AdvisorySlots (or flow.DefaultAdvisorySlots), so that every
	// flow a port may hold has its advisory entry. Name is set per port.
	Channel channel.Options
	// ReapInterval is how often idle pool segments are reaped; 0 means
	// DefaultReapInterval.
	ReapInterval time.Duration
	// Logger gets the nexus's warnings (a limit hit, once per burst);
	// nil means slog.Default().
	Logger *slog.Logger
	// BusyPoll is the worker's spin budget, as SO_BUSY_POLL is a
	// socket's: when a round finds no work, the worker keeps running
	// rounds (yielding the CPU between them, and serving requests) for up
	// to BusyPoll before it sleeps. A packet or a kick that comes within
	// the budget is then taken without a goroutine wake-up, at the cost
	// of the CPU the spinning burns. 0 (the default): the worker sleeps
	// at once.
	BusyPoll time.Duration
	// Reserve, if set, reserves a listener flow's local address and port
	// in the kernel's stack that shares the device (AF_XDP, AF_PACKET;
	// drivers.Reserver.Reserve): one port namespace for the kernel and
	// the apps. Register calls it for every listener flow (Listener3,
	// Listener2) after the flow table accepted the flow and before the
	// flow is steered, and fails the flow if it fails (a kernel socket
	// holds the port: an error wrapping flow.ErrKernelPort); the flow's
	// teardown, on every path, closes the reservation. A reservation's
	// socket is how processes on this host reach the app
	// (Port.HostListener): a TCP one's connections, a UDP one's
	// datagrams. Connected flows are not reserved: see
	// Ephemeral.
	Reserve func(key packet.Key) (Reservation, error)
	// Ephemeral is the range of local ports, [lo, hi], apps' outgoing
	// connections take (Port.Ephemeral; the control server's default).
	// With a kernel sharing the device it must not overlap the kernel's
	// ephemeral range (drivers.AppEphemeral), so that kernel and user
	// space never pick the same source port. Zero: apps take their
	// stack's default range.
	Ephemeral [2]uint16
	// AdoptReservation wraps a reservation's socket another nexus handed
	// over with a port (AdoptPort; drivers.AdoptReservation), taking
	// ownership of fd. Needed only to take over a nexus that reserves.
	AdoptReservation func(key packet.Key, fd int) (Reservation, error)
	// Frozen starts the nexus frozen (handover.go): it serves requests
	// (AdoptPort) but runs no datapath until Thaw. A nexus taking over
	// from another starts so, and thaws once the old one let go.
	Frozen bool
}

// Reservation is a listener flow's port held in the kernel's stack
// (Options.Reserve).
type Reservation interface {
	// Listener returns a duplicate of the reservation's socket, which
	// serves processes on this host only (a TCP one accepts their
	// connections, a UDP one receives their datagrams and sends the
	// app's answers), or nil if it has none. The caller owns the file.
	Listener() (*os.File, error)
	// Close gives the port back to the kernel.
	Close() error
}

// Nexus owns a link and a flowswitch and serves application ports (see the
// package doc). Its methods are safe for concurrent use.
type Nexus struct {
	opts  Options // immutable after New
	link  netif.Link
	steer netif.FlowSteerer // the link, if it steers flows (AF_XDP, AF_PACKET); immutable
	addrs []netip.Addr      // immutable
	mtu   int               // immutable

	ctrl   chan func()   // requests for the worker; unbuffered
	bell   chan struct{} // 1-buffered: a port waiter woke, or an app kicked
	parked atomic.Bool   // the worker is about to sleep or sleeps: kicks must ring
	stop   chan struct{} // closed by Close
	exited chan struct{} // closed when the worker has returned
	failed chan struct{} // closed when the link failed; linkErr is set before and never changes after
	once   sync.Once

	// Owned by the worker goroutine.
	sw        *flowswitch.Switch
	ports     map[flow.PortID]*port
	order     []*port     // live ports, in the order they were opened
	dev       *linkWaiter // the device link
	host      *linkWaiter // the host link, or nil
	linkErr   error       // a link failed: no more datapath
	lastReap  time.Time
	now       time.Time               // when the last round started
	svcDue    time.Time               // when the switch's timed work (Service) is next due
	waiters   sync.WaitGroup          // link and port waiters
	seq       int                     // ports opened, for channel names
	limitLog  burstLog                // flow limits hit
	steered   map[packet.Key]struct{} // keys with their own entry in the link's steering map (steer.go)
	covered   int                     // registered connected flows a steered listener's entry covers
	steerFull uint64                  // flows refused because the steering map was full
	maybeOwn  map[packet.Key]struct{} // adopted covered flows that may have an entry of their own (steer.go)
	log       *slog.Logger            // immutable

	// Takeover (handover.go), owned by the worker too.
	frozen    bool       // the datapath is frozen: requests only
	abandoned bool       // a takeover committed: shutdown abandons, not closes
	advClear  []advClear // adopted flows' advisories, cleared at Thaw
}

// New starts a nexus on opts.Link. It checks every option and builds the
// switch before it starts the worker.
func New(opts Options) (*Nexus, error) {
	if opts.Link == nil {
		return nil, fmt.Errorf("nexus: no link: give Options.Link a netif.Link (e.g. one end of memif.NewPair)")
	}
	if len(opts.Addrs) == 0 {
		return nil, fmt.Errorf("nexus: no interface address: give Options.Addrs the addresses apps may use")
	}
	if opts.Switch.Link != nil || opts.Switch.LocalAddrs != nil {
		return nil, fmt.Errorf("nexus: set Options.Link and Options.Addrs, not Options.Switch.Link/LocalAddrs")
	}
	if e := opts.Ephemeral; e != [2]uint16{} && (e[0] == 0 || e[1] < e[0]) {
		return nil, fmt.Errorf("nexus: ephemeral port range %d-%d: want 0 < lo <= hi", e[0], e[1])
	}
	if opts.ReapInterval < 0 {
		return nil, fmt.Errorf("nexus: negative reap interval %v", opts.ReapInterval)
	}
	if opts.BusyPoll < 0 || opts.BusyPoll > time.Second {
		return nil, fmt.Errorf("nexus: busy-poll budget %v outside 0..1s", opts.BusyPoll)
	}
	if opts.ReapInterval == 0 {
		opts.ReapInterval = DefaultReapInterval
	}
	so := opts.Switch
	so.Link, so.LocalAddrs = opts.Link, opts.Addrs
	if so.IdleWait == 0 {
		// The switch's idle wait bounds how long a caller sleeping on the
		// link alone may sleep; the worker is woken by the apps
		// themselves, so it only caps Round's answer: make it the
		// reaper's period.
		so.IdleWait = opts.ReapInterval
	}
	sw, err := flowswitch.New(so)
	if err != nil {
		return nil, fmt.Errorf("nexus: %w", err)
	}
	co := &opts.Channel
	if co.Pool.BufferSize == 0 {
		co.Pool.BufferSize = DefaultBufferSize
		if co.Pool.SegmentSize == 0 && !co.Pool.HugePages {
			co.Pool.SegmentSize = DefaultSegmentSize
		}
	}
	if co.Pool.MaxSegments == 0 {
		co.Pool.MaxSegments = max(DefaultMaxSegments, co.Pool.MinSegments)
	}
	if co.TxSize == 0 {
		co.TxSize = channel.DefaultTxSize
	}
	if co.Advisories == 0 {
		co.Advisories = max(opts.Switch.AdvisorySlots, flow.DefaultAdvisorySlots)
	}
	n := &Nexus{
		opts:     opts,
		link:     opts.Link,
		steer:    steerer(opts.Link),
		addrs:    append([]netip.Addr(nil), opts.Addrs...),
		mtu:      opts.Link.MTU(),
		ctrl:     make(chan func()),
		bell:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		exited:   make(chan struct{}),
		failed:   make(chan struct{}),
		sw:       sw,
		ports:    make(map[flow.PortID]*port),
		steered:  make(map[packet.Key]struct{}),
		maybeOwn: make(map[packet.Key]struct{}),
		lastReap: time.Now(),
		frozen:   opts.Frozen,
		log:      opts.Logger,
	}
	if n.log == nil {
		n.log = slog.Default()
	}
	n.dev = newLinkWaiter(opts.Link, &n.waiters)
	if opts.Switch.HostLink != nil {
		n.host = newLinkWaiter(opts.Switch.HostLink, &n.waiters)
	}
	go n.run()
	return n, nil
}

// Addrs returns the interface's addresses.
func (n *Nexus) Addrs() []netip.Addr { return append([]netip.Addr(nil), n.addrs...) }

// MTU returns the link's MTU: the largest IP packet an app may send.
func (n *Nexus) MTU() int { return n.mtu }

// Ephemeral returns Options.Ephemeral: the local ports apps' outgoing
// connections take, or zero.
func (n *Nexus) Ephemeral() [2]uint16 { return n.opts.Ephemeral }

// Close stops the worker, closes every port's channel (their apps see
// channel.ReasonClosed), stops every goroutine the nexus started and closes
// the link. It returns the link's error if the link failed. Safe to call
// more than once and from any goroutine.
func (n *Nexus) Close() error {
	n.once.Do(func() { close(n.stop) })
	<-n.exited
	return n.linkErr
}

// Done is closed once the nexus has closed (every port closed with it), so
// that an app in this process learns it as one in another process learns
// it from its control socket (package nexus/inproc).
func (n *Nexus) Done() <-chan struct{} { return n.exited }

// LinkFailed is closed when the link failed: the datapath stopped and every
// port was closed (their apps see their channels closed); requests are
// still answered, with LinkErr. A daemon exits on it.
func (n *Nexus) LinkFailed() <-chan struct{} { return n.failed }

// LinkErr returns why the link failed, or nil while it has not.
func (n *Nexus) LinkErr() error {
	select {
	case <-n.failed:
		return n.linkErr
	default:
		return nil
	}
}

// do runs f on the worker, between two datapath rounds, and returns its
// error, or ErrClosed if the nexus is closed (then f did not run).
func (n *Nexus) do(f func() error) error {
	res := make(chan error, 1)
	select {
	case n.ctrl <- func() { res <- f() }:
		return <-res // the worker runs every request it accepted
	case <-n.exited:
		return ErrClosed
	}
}

// Stats are a nexus's figures: the switch's counters and the state that
// must come back to its baseline once the apps are idle.
type Stats struct {
	Switch flowswitch.Stats
	Link   netif.Stats
	Flows  int // active flows in the table
	// Steered counts the flows with their own entry in the link's
	// steering map (listeners, outgoing connections), Covered the
	// connected flows a steered listener's entry covers (accepted
	// connections, replies from a bound port): they cost the map
	// nothing (steer.go).
	Steered, Covered int
	// SteerFull counts flows refused because the link's steering map was
	// full (refused as flow.ErrTooManyFlows, logged with the flow limits).
	SteerFull uint64
	Ports     []PortStats
}

// PortStats are one port's figures.
type PortStats struct {
	Name    string
	Flows   int // flows the port registered and did not tear down
	Channel channel.Counters
	Pool    pool.Stats
	InUse   int   // buffers out of the pool: held by the app (alloc ring included) or the nexus
	MaxPool int64 // bytes the pool may grow to (PortOptions.MaxPool)
	Defunct bool
}

// Snapshot returns the switch's full counters: per flow, port, ring and
// drop reason; metrics.New takes it as its snapshot function. It is taken by
// the worker between two rounds, like Stats: the channels' counters it reads
// are written by the worker outside the switch's lock.
func (n *Nexus) Snapshot() (flowswitch.Snapshot, error) {
	var snap flowswitch.Snapshot
	err := n.do(func() error {
		snap = n.sw.Snapshot()
		return nil
	})
	return snap, err
}

// Stats returns a snapshot, taken by the worker between two rounds.
func (n *Nexus) Stats() (Stats, error) {
	var st Stats
	err := n.do(func() error {
		st.Switch = n.sw.Stats()
		st.Link = n.link.Stats()
		n.sw.Do(func() { st.Flows = n.sw.Table().Len() })
		st.Steered, st.Covered, st.SteerFull = len(n.steered), n.covered, n.steerFull
		for _, p := range n.order {
			pl := p.ch.Pool()
			ps := pl.Stats()
			st.Ports = append(st.Ports, PortStats{
				Name: p.ch.Name(), Flows: len(p.flows), Channel: p.ch.Counters(), Pool: ps,
				InUse: ps.BuffersTotal - ps.FreeBuffers, Defunct: p.ch.Err() != nil,
				MaxPool: int64(pl.Options().MaxSegments) * int64(pl.SegmentSize()),
			})
		}
		return nil
	})
	return st, err
}

// run is the worker: the datapath loop of docs/design.md §5 and §6 with the
// requests served in between, parking when a round found nothing to do.
func (n *Nexus) run() {
	defer close(n.exited)
	defer n.shutdown()
	for {
		busy := false
		// Requests that came while the worker was busy.
		for drained := false; !drained; {
			select {
			case f := <-n.ctrl:
				f()
				busy = true
			case <-n.stop:
				return
			default:
				drained = true
			}
		}
		if n.frozen {
			// A takeover holds the datapath: serve requests only.
			if !n.parkFrozen() {
				return
			}
			continue
		}
		// A link waiter may have handed its link back while we were busy.
		n.linkBack(n.dev.poll())
		n.linkBack(n.host.poll())
		if n.round() {
			busy = true
		}
		if !busy && !n.spin() {
			if !n.park() {
				return
			}
		}
	}
}

// spin runs rounds for up to the busy-poll budget (Options.BusyPoll) and
// reports whether one found work or a request came. It yields the CPU
// between rounds, so that on a machine with fewer cores than busy
// goroutines the app it waits for gets to run; the links stay held, so
// a packet is read without the link waiter's hand-off.
func (n *Nexus) spin() bool {
	if n.opts.BusyPoll <= 0 {
		return false
	}
	for end := time.Now().Add(n.opts.BusyPoll); time.Now().Before(end); {
		runtime.Gosched()
		select {
		case <-n.stop:
			return true // the loop sees it
		case f := <-n.ctrl:
			f()
			return true
		default:
		}
		n.linkBack(n.dev.poll())
		n.linkBack(n.host.poll())
		if n.round() {
			return true
		}
	}
	return false
}

// round runs the datapath once: the switch's Round (one input batch from
// the link, one TX sync over every port, the host link's frames, the TX
// queue's flush and the switch's timed work), then each channel's
// housekeeping, the apps' bells and, when due, the reaper. It reports
// whether it moved any packet.
func (n *Nexus) round() bool {
	moved := 0
	// One clock read per round: on a VM the clock costs up to a few
	// hundred ns, and a round trip through two nexuses runs a dozen
	// rounds. The switch's timed work is thus due a Round's duration
	// early, at worst.
	now := time.Now()
	n.now = now
	if n.linkErr == nil {
		// The links the worker holds the reader role of; the timed work
		// runs before the channels' Sync, which signals what it
		// delivered and publishes its advisories' events.
		var read flowswitch.Reads
		if n.dev.held {
			read |= flowswitch.ReadDevice
		}
		if n.host != nil && n.host.held {
			read |= flowswitch.ReadHost
		}
		k, w, err := n.sw.Round(read)
		if err != nil {
			n.failLink(err)
		}
		moved += k
		n.svcDue = now.Add(w)
		if w == 0 {
			moved++ // due again at once (a queue draining into the device)
		}
	}
	reap := now.Sub(n.lastReap) >= n.opts.ReapInterval
	if reap {
		n.lastReap = now
	}
	for i := 0; i < len(n.order); i++ {
		p := n.order[i]
		if reap {
			p.ch.Reap(now)
		}
		if err := p.ch.Sync(); err != nil {
			// The app broke the channel contract: the channel is
			// defunct and its memory reclaimed. Its flows go, the
			// others are untouched.
			n.closePort(p)
			i--
			continue
		}
		p.ring()
	}
	return moved > 0
}

// failLink records a link error: the datapath stops, requests are still
// served, and the apps learn of it through their closed channels.
func (n *Nexus) failLink(err error) {
	if n.linkErr != nil {
		return
	}
	n.linkErr = fmt.Errorf("nexus on %s: %w", n.link.Name(), err)
	close(n.failed)
	for len(n.order) > 0 {
		n.closePort(n.order[0])
	}
}

func (n *Nexus) linkBack(err error) {
	if err != nil && n.linkErr == nil {
		n.failLink(err)
	}
}

// park blocks until the link has frames, an app kicked its port, a
// request came, the reaper is due or Close was called; it returns false on
// Close. Every waiter it armed is disarmed before it returns.
//
// In-process ports wake the worker with Port.Kick, which rings the bell only
// while parked is set: the worker sets it, then runs one more round to
// find what was committed before the apps could see it (the rings'
// arm-then-recheck order), and only then sleeps.
func (n *Nexus) park() bool {
	n.parked.Store(true)
	n.dev.drain()
	n.host.drain()
	if n.round() {
		n.parked.Store(false)
		return true
	}
	if n.linkErr == nil {
		n.dev.give()
		n.host.give()
	}
	for _, p := range n.order {
		p.arm()
	}
	// From the clock of the round just run: it is at most that round old.
	due := n.opts.ReapInterval - n.now.Sub(n.lastReap)
	if n.linkErr == nil {
		due = min(due, n.svcDue.Sub(n.now))
	}
	timer := time.NewTimer(max(due, 0))
	defer timer.Stop()
	var devFrames, devClosed, hostFrames, hostClosed <-chan struct{}
	if n.linkErr == nil { // a failed datapath reads no link
		devFrames, devClosed = n.dev.ready()
		hostFrames, hostClosed = n.host.ready()
	}
	var req func()
	ok := true
	select {
	case err := <-n.dev.doneCh():
		n.dev.held = true
		n.linkBack(err)
	case err := <-n.host.doneCh():
		n.host.held = true
		n.linkBack(err)
	case <-devFrames:
	case <-hostFrames:
	case <-devClosed:
		n.linkBack(netif.ErrClosed)
	case <-hostClosed:
		n.linkBack(netif.ErrClosed)
	case <-n.bell:
	case req = <-n.ctrl:
	case <-timer.C:
	case <-n.stop:
		ok = false
	}
	n.parked.Store(false)
	for _, p := range n.order {
		p.disarm()
	}
	// Every waiter has rung (if at all) before its disarm returned, so the
	// bell holds no stale ring for the next park; a kick that rings from
	// here on is for work the next round does anyway.
	select {
	case <-n.bell:
	default:
	}
	if req != nil {
		req()
	}
	return ok
}

// parkFrozen blocks a frozen worker until a request or Close; it
// returns false on Close.
func (n *Nexus) parkFrozen() bool {
	select {
	case req := <-n.ctrl:
		req()
		return true
	case <-n.stop:
		return false
	}
}

// shutdown runs on the worker as it returns: it closes every port, stops
// the waiters and closes the link.
func (n *Nexus) shutdown() {
	if n.abandoned {
		n.abandonPorts()
	}
	for len(n.order) > 0 {
		n.closePort(n.order[0])
	}
	// Close the links first: that unblocks a link waiter inside Wait.
	for _, w := range []*linkWaiter{n.dev, n.host} {
		if w == nil {
			continue
		}
		if err := w.link.Close(); err != nil && n.linkErr == nil {
			n.linkErr = fmt.Errorf("nexus: close link %s: %w", w.link.Name(), err)
		}
		w.stop()
	}
	n.waiters.Wait()
	// Answer requests that raced Close: they see ErrClosed from do once
	// exited is closed; none is accepted after this point.
}
