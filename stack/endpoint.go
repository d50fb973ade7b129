package stack

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet"
)

// Port is what an Endpoint needs from its nexus port: the app end of the
// channel and the port's control requests. *nexus.Port implements it in
// this process; a Unix-socket transport can implement it across processes.
type Port interface {
	// App returns the app end of the port's channel.
	App() *channel.App
	// Register registers a flow and returns its flow ID and its entry in
	// the channel's advisory table.
	Register(key packet.Key, kind flow.Kind) (channel.FlowInfo, error)
	// Teardown tears down a flow the port registered.
	Teardown(key packet.Key) error
	// Wait arms the wake-up, calls check and, if check found no work,
	// blocks until the nexus may have work for the app (including an event
	// on the event ring: a resume must wake a sleeping endpoint), Wake,
	// the timeout (0: none) or the port's closing (an error).
	Wait(check func() bool, timeout time.Duration) error
	// Wake makes a Wait return; safe from any goroutine.
	Wake()
	// Kick tells the nexus the app put work on its rings (sent, freed, or
	// ran short of buffers); cheap while the nexus is busy. Safe from any
	// goroutine.
	Kick()
}

// Defaults of Options.
const (
	// DefaultGSOMaxSize is the largest TCP segment netstack hands down:
	// 64 KiB less one, so the IPv4 total length of the segment still fits
	// its 16-bit field. Larger means fewer trips through netstack per byte.
	DefaultGSOMaxSize = 1<<16 - 1
	// DefaultRxBatch is the most packets one poll takes from the RX ring:
	// two flowswitch input batches, so a poll usually empties the ring.
	DefaultRxBatch = 64
	// DefaultMaxPending bounds the packets queued while the TX ring or the
	// pool is full: a few TCP windows of MTU packets. Past it packets are
	// dropped and counted (TCP retransmits them), so memory stays bounded.
	DefaultMaxPending = 4096
	// DefaultMaxHeld bounds the packets held per suspended flow: a TCP
	// window at the default 1 MiB send buffer in MTU packets (725 at 1500
	// bytes) with room for the retransmissions netstack makes while it
	// hears nothing; a super packet carries up to a buffer's worth. A held
	// TCP packet keeps alive data netstack keeps anyway for retransmission.
	// Past it packets are dropped and counted (TCP retransmits them).
	DefaultMaxHeld = 1024
	// DefaultReapInterval is how often the reaper looks at TCP flows that
	// saw a FIN or RST; every 64 intervals it looks at all TCP flows.
	DefaultReapInterval = 20 * time.Millisecond
	// DefaultGrace is the age below which a TCP flow is never reaped for
	// lack of a netstack endpoint: a connection being dialed or accepted
	// may not be in netstack's table yet.
	DefaultGrace = 2 * time.Second
	// spareMax bounds the buffers one flush asks Alloc for: a TX ring's
	// worth, as much as one Send can place.
	spareMax = channel.DefaultTxSize
)

// ErrStopped is returned by Register and Release after Stop.
var ErrStopped = errors.New("stack endpoint stopped")

// Options configures an Endpoint.
type Options struct {
	// Port is the nexus port; required. The endpoint uses its App from
	// Attach until Stop; the caller closes the port afterwards.
	Port Port
	// MTU is the largest IP packet the port may send (the link's MTU);
	// required.
	MTU int
	// GSOMaxSize is the largest TCP segment netstack may hand down (host
	// GSO: sent whole as a super packet, segmented by the nexus or the
	// link), bounded by the channel's buffer size; 0 means
	// DefaultGSOMaxSize, negative disables GSO.
	GSOMaxSize int
	// ChecksumOffload declares checksum offload to netstack: TCP and UDP
	// packets leave without their checksum (channel.FlagCsumPartial; the
	// nexus completes it where a device needs it), and packets the nexus
	// marks channel.FlagCsumValid (from an in-memory wire) are not
	// verified; others the endpoint verifies before netstack sees them,
	// fragments once their datagram is complete (fragcsum.go). Off by
	// default because netstack computes no checksum at all for a UDP
	// datagram it fragments, and fragments cannot be completed on their
	// own: with offload such a datagram leaves with a zero UDP checksum
	// (none, over IPv4; refused by the receiver over IPv6). Turn it on for
	// TCP, or UDP within the MTU.
	ChecksumOffload bool
	// RxBatch is the most packets taken from the RX ring per poll; 0 means
	// DefaultRxBatch.
	RxBatch int
	// MaxPending bounds queued TX packets; 0 means DefaultMaxPending.
	MaxPending int
	// MaxHeld bounds the packets held per suspended flow; 0 means
	// DefaultMaxHeld.
	MaxHeld int
	// Alive reports whether netstack still has a live connection for the
	// TCP 5-tuple key (oriented to the local side): not closed, not in
	// TIME-WAIT. Nil disables the reaper: TCP flows then go only by Release
	// or Stop. It is called from the reaper goroutine.
	Alive func(key packet.Key) bool
	// ReapInterval and Grace tune the reaper; 0 means the defaults.
	ReapInterval, Grace time.Duration
	// Refuse is called, from the registrar goroutine and with no lock
	// held, for each flow registered on demand that the nexus refused
	// (err wraps why: flow.ErrTooManyFlows for its limits): it should reset
	// the TCP connection of key, so its peer hears of it (package client
	// aborts it, and the RST leaves on the listener's flow). Nil: the
	// connection's packets are dropped, counted, until netstack gives up.
	Refuse func(key packet.Key, err error)
	// Handshaking reports whether netstack's connection of the TCP
	// 5-tuple key is still in its handshake (SYN-RCVD). Such a
	// connection's packets other than SYN-ACKs and RSTs (a challenge ACK
	// to a stray segment) are dropped, counted as TxHandshake, instead of
	// registering a flow: a half-open connection must cost the nexus
	// nothing, whatever a flood sends it. Nil: they register a flow. It
	// is called from netstack's goroutines, so it must not wait for a
	// connection's lock.
	Handshaking func(key packet.Key) bool
	// BusyPoll is the service goroutine's spin budget, as SO_BUSY_POLL
	// is a socket's: when a poll finds no work, it polls again (yielding
	// the CPU between polls) for up to BusyPoll before it sleeps in
	// Port.Wait, so a packet that comes within the budget is taken
	// without a wake-up, at the cost of the CPU the spinning burns. 0
	// (the default): it sleeps at once.
	BusyPoll time.Duration
}

// Stats are an endpoint's counters.
type Stats struct {
	RxPackets, RxBytes uint64 // packets delivered to netstack (super packets count once)
	RxPolls            uint64 // polls that received at least one packet
	RxDropped          uint64 // not IP, no dispatcher attached, or a bad checksum
	RxBadChecksum      uint64 // of which: checksums that did not verify (a packet not marked channel.FlagCsumValid)
	RxRetractedACKs    uint64 // pure ACKs from inside a window netstack retracted, renumbered so it takes them (window.go)
	TxPackets, TxBytes uint64 // packets put on the TX ring (after segmentation)
	TxSends            uint64 // Send calls that put at least one packet on the ring
	TxGSO              uint64 // super packets (netstack GSO packets above the MTU) put whole on the TX ring
	TxWaits            uint64 // WritePackets calls that left packets waiting for ring space or buffers
	TxNoFlow           uint64 // dropped: no flow the port registered (ICMP, stray RST, a flow torn down under queued or held packets)
	TxRegisterFail     uint64 // dropped: registering its flow failed (held while pending, then refused)
	TxHandshake        uint64 // dropped: not a SYN-ACK or RST, of a connection in its handshake (Options.Handshaking)
	TxOversize         uint64 // dropped: above the MTU and not a super packet the nexus takes, or above the buffer size
	TxQueueFull        uint64 // dropped: MaxPending packets already waiting
	TxClosed           uint64 // dropped: the endpoint was stopped
	FlowsRegistered    uint64 // flows registered (by Register or on demand)
	FlowsAuto          uint64 // of which on demand, for a listener's port
	FlowsReleased      uint64 // flows torn down (Release, reaper, Stop)
	FlowsReaped        uint64 // of which by the reaper
	RegisterBatches    uint64 // batches of on-demand flows the registrar registered
	FlowsRefused       uint64 // on-demand flows the nexus refused (handed to Options.Refuse)
	FlowLimitHits      uint64 // of which for a limit (flow.ErrTooManyFlows)
	// Flow advisories (docs/design.md §7).
	TxHeld         uint64 // packets held back because their flow was suspended
	TxHeldSent     uint64 // held packets sent once their flow was admissible again
	TxHeldDrops    uint64 // dropped: MaxHeld packets of their flow already held
	FlowsHeld      uint64 // times a suspended flow began holding packets
	FlowsResumed   uint64 // times a held flow sent all it held
	AdvisoryEvents uint64 // advisory events taken off the event ring
}

// Endpoint is a netstack link endpoint on a nexus port. See the package doc.
type Endpoint struct {
	port   Port         // immutable
	app    *channel.App // immutable; used under mu
	bufLen int          // channel buffer size; immutable
	gsoMax uint32       // immutable; 0: no GSO
	opts   Options      // immutable
	mtu    atomic.Uint32

	dmu        sync.RWMutex
	dispatcher gstack.NetworkDispatcher // guarded by dmu

	mu      sync.Mutex
	stopped bool            // guarded by mu
	pending []txItem        // guarded by mu: packets waiting for buffers, in order
	ready   []channel.Buf   // guarded by mu: filled buffers waiting for ring space
	spare   []channel.Buf   // guarded by mu: allocated, unused buffers
	freeq   []channel.Buf   // guarded by mu: received buffers the free ring had no room for
	holding []*flowRec      // guarded by mu: the flows with held packets (flowRec.held), in no order
	rxBufs  []channel.Buf   // guarded by mu: Receive scratch
	events  []channel.Event // guarded by mu: Events scratch
	appErr  error           // guarded by mu: the channel's error, once it failed

	// Owned by the service goroutine.
	rxPkts    []*gstack.PacketBuffer
	rxProtos  []tcpip.NetworkProtocolNumber
	rxParsed  packet.Parsed
	heldFrags []*fragDatagram // fragments held until their datagram verifies (fragcsum.go); under mu
	rxExtra   []heldFrag      // verified fragments to deliver after this poll's batch; under mu

	flows flowTable
	wins  windows
	frags fragKeys // the flows of the datagrams netstack sends in fragments (frag.go)

	start  sync.Once
	stop   chan struct{} // closed by Stop
	stopMu sync.Once
	wg     sync.WaitGroup // service, registrar and reaper goroutines

	stats stats
}

var (
	_ gstack.LinkEndpoint = (*Endpoint)(nil)
	_ gstack.GSOEndpoint  = (*Endpoint)(nil)
)

// New returns an endpoint on opts.Port. Its goroutines start at the first
// Attach of a dispatcher (netstack's CreateNIC).
func New(opts Options) (*Endpoint, error) {
	if opts.Port == nil || opts.Port.App() == nil {
		return nil, fmt.Errorf("stack: no port: give Options.Port an open nexus port")
	}
	if opts.MTU < header.IPv4MinimumProcessableDatagramSize || opts.MTU > 1<<16-1 {
		return nil, fmt.Errorf("stack: MTU %d outside %d..%d", opts.MTU, header.IPv4MinimumProcessableDatagramSize, 1<<16-1)
	}
	if opts.BusyPoll < 0 || opts.BusyPoll > time.Second {
		return nil, fmt.Errorf("stack: busy-poll budget %v outside 0..1s", opts.BusyPoll)
	}
	if opts.RxBatch < 0 || opts.MaxPending < 0 || opts.MaxHeld < 0 || opts.ReapInterval < 0 || opts.Grace < 0 {
		return nil, fmt.Errorf("stack: negative RxBatch, MaxPending, MaxHeld, ReapInterval or Grace")
	}
	app := opts.Port.App()
	bufLen := app.BufferSize()
	if bufLen < opts.MTU {
		return nil, fmt.Errorf("stack: channel buffers of %d bytes cannot hold an MTU of %d: open the port with larger buffers", bufLen, opts.MTU)
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&opts.RxBatch, DefaultRxBatch)
	def(&opts.MaxPending, DefaultMaxPending)
	def(&opts.MaxHeld, DefaultMaxHeld)
	def(&opts.GSOMaxSize, DefaultGSOMaxSize)
	if opts.ReapInterval == 0 {
		opts.ReapInterval = DefaultReapInterval
	}
	if opts.Grace == 0 {
		opts.Grace = DefaultGrace
	}
	e := &Endpoint{
		port:     opts.Port,
		app:      app,
		bufLen:   bufLen,
		opts:     opts,
		rxBufs:   make([]channel.Buf, opts.RxBatch),
		events:   make([]channel.Event, channel.DefaultEventSize),
		rxPkts:   make([]*gstack.PacketBuffer, opts.RxBatch),
		rxProtos: make([]tcpip.NetworkProtocolNumber, opts.RxBatch),
		stop:     make(chan struct{}),
	}
	// A GSO packet goes down whole, as one super packet in one channel
	// buffer: netstack keeps its payload under GSOMaxSize less
	// header.TCPTotalHeaderMaximumSize (160) bytes, more than any headers,
	// so a GSOMaxSize of the buffer size always fits. GSO is on only when
	// that leaves room for two full segments: below, super packets would
	// not pay for their headers.
	if g := min(opts.GSOMaxSize, DefaultGSOMaxSize, bufLen); opts.GSOMaxSize > 0 &&
		g-header.TCPTotalHeaderMaximumSize-1 >= 2*(opts.MTU-header.IPv4MinimumSize-header.TCPMinimumSize) {
		e.gsoMax = uint32(g)
	}
	e.mtu.Store(uint32(opts.MTU))
	e.flows.init()
	return e, nil
}

// MTU implements stack.LinkEndpoint.MTU.
func (e *Endpoint) MTU() uint32 { return e.mtu.Load() }

// SetMTU implements stack.LinkEndpoint.SetMTU. An MTU above the port's is
// refused (the nexus would drop the packets); a lower one is kept.
func (e *Endpoint) SetMTU(mtu uint32) {
	if mtu <= uint32(e.opts.MTU) {
		e.mtu.Store(mtu)
	}
}

// MaxHeaderLength implements stack.LinkEndpoint.MaxHeaderLength: the nexus
// writes the link header, the app sends raw IP.
func (*Endpoint) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.LinkEndpoint.LinkAddress: raw IP, none.
func (*Endpoint) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements stack.LinkEndpoint.SetLinkAddress; ignored.
func (*Endpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.LinkEndpoint.Capabilities: checksum
// offload both ways with Options.ChecksumOffload. netstack then
// computes no TCP or UDP checksum (the packet leaves with
// channel.FlagCsumPartial) and verifies none on receive: the endpoint
// verifies those the nexus did not mark channel.FlagCsumValid
// (packet.ChecksumsValid: the IPv4 header, TCP, UDP), netstack being told
// per link, not per packet. Without offload netstack computes and
// verifies them all, but for GSO packets, whose partial TCP checksum the
// endpoint completes.
func (e *Endpoint) Capabilities() gstack.LinkEndpointCapabilities {
	if !e.opts.ChecksumOffload {
		return 0
	}
	return gstack.CapabilityTXChecksumOffload | gstack.CapabilityRXChecksumOffload
}

// GSOMaxSize implements stack.GSOEndpoint.GSOMaxSize.
func (e *Endpoint) GSOMaxSize() uint32 { return e.gsoMax }

// SupportedGSO implements stack.GSOEndpoint.SupportedGSO: host GSO; the
// nexus or its link segments (see the package doc).
func (e *Endpoint) SupportedGSO() gstack.SupportedGSO {
	if e.gsoMax == 0 {
		return gstack.GSONotSupported
	}
	return gstack.HostGSOSupported
}

// ARPHardwareType implements stack.LinkEndpoint.ARPHardwareType.
func (*Endpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements stack.LinkEndpoint.AddHeader: no link header.
func (*Endpoint) AddHeader(*gstack.PacketBuffer) {}

// ParseHeader implements stack.LinkEndpoint.ParseHeader: no link header.
func (*Endpoint) ParseHeader(*gstack.PacketBuffer) bool { return true }

// SetOnCloseAction implements stack.LinkEndpoint.SetOnCloseAction; unused.
func (*Endpoint) SetOnCloseAction(func()) {}

// Attach implements stack.LinkEndpoint.Attach. The first non-nil dispatcher
// starts the service goroutine and the reaper; nil detaches (received
// packets are then dropped).
func (e *Endpoint) Attach(d gstack.NetworkDispatcher) {
	e.dmu.Lock()
	e.dispatcher = d
	e.dmu.Unlock()
	if d == nil {
		return
	}
	e.start.Do(func() {
		select {
		case <-e.stop:
			return // stopped before it ever ran
		default:
		}
		e.wg.Add(2)
		go e.serve()
		go e.registrar()
		if e.opts.Alive != nil {
			e.wg.Add(1)
			go e.reaper()
		}
	})
}

// IsAttached implements stack.LinkEndpoint.IsAttached.
func (e *Endpoint) IsAttached() bool {
	e.dmu.RLock()
	defer e.dmu.RUnlock()
	return e.dispatcher != nil
}

// Close implements stack.LinkEndpoint.Close: netstack calls it as it
// removes the NIC. It stops the endpoint's goroutines without waiting for
// them (netstack holds its own lock here); Wait or Stop joins them.
func (e *Endpoint) Close() {
	e.stopMu.Do(func() { close(e.stop) })
	e.port.Wake()
}

// Wait implements stack.LinkEndpoint.Wait: it joins the goroutines, once
// Close or Stop asked them to stop.
func (e *Endpoint) Wait() {
	select {
	case <-e.stop:
		e.wg.Wait()
	default:
		// Not asked to stop: netstack's Wait contract is about
		// goroutines being stopped, and ours have not been asked.
	}
}

// Stop stops the endpoint and joins its goroutines, then tears down every
// flow it registered, drops the queued packets (releasing their
// references) and gives its spare buffers back to the nexus. Call it
// before netstack's Stack.Wait or Destroy: netstack calls Close and Wait
// with its own lock held, and a delivery in progress may need that lock.
// Safe to call more than once.
func (e *Endpoint) Stop() {
	e.Close()
	e.wg.Wait()
	e.mu.Lock()
	if e.stopped {
		e.mu.Unlock()
		return
	}
	e.stopped = true
	for len(e.heldFrags) > 0 {
		e.dropFrag(0)
	}
	for i := range e.pending {
		e.pending[i].pkt.DecRef()
	}
	e.stats.txClosed.Add(uint64(len(e.pending)))
	clear(e.pending)
	e.pending = nil
	for _, f := range e.holding {
		e.stats.txClosed.Add(uint64(f.dropHeld()))
	}
	clear(e.holding)
	e.holding = nil
	// Best effort: the nexus reclaims everything when the port closes.
	if e.appErr == nil {
		bufs := append(append(append([]channel.Buf(nil), e.spare...), e.ready...), e.freeq...)
		for len(bufs) > 0 {
			k, err := e.app.Free(bufs)
			if err != nil || k == 0 {
				break
			}
			bufs = bufs[k:]
		}
	}
	e.spare, e.ready, e.freeq = nil, nil, nil
	e.mu.Unlock()
	e.flows.releaseAll(e)
}

// Err returns the channel's error once it failed (defunct or closed).
func (e *Endpoint) Err() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.appErr
}

// Stats returns the endpoint's counters.
func (e *Endpoint) Stats() Stats { return e.stats.snapshot() }

// Flows returns how many flows the endpoint holds registered.
func (e *Endpoint) Flows() int { return e.flows.len() }

// Held returns how many channel buffers the endpoint holds now (spare,
// filled and waiting, or waiting to be freed): 0 to a few hundred, never
// growing without bound. Packets held for a suspended flow are not in
// channel buffers: see Suspended.
func (e *Endpoint) Held() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.spare) + len(e.ready) + len(e.freeq)
}

// Suspended returns the flows holding packets back now, because the nexus
// suspended them (or because they were suspended and the endpoint has not
// sent all they held yet), and how many packets they hold.
func (e *Endpoint) Suspended() (flows, packets int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, f := range e.holding {
		packets += len(f.held)
	}
	return len(e.holding), packets
}

type stats struct {
	rxPackets, rxBytes, rxPolls, rxDropped           atomic.Uint64
	rxRetractedACKs, rxBadChecksum                   atomic.Uint64
	txPackets, txBytes, txSends, txGSO, txWaits      atomic.Uint64
	txNoFlow, txRegisterFail, txOversize, txQueueFul atomic.Uint64
	txClosed, txHandshake                            atomic.Uint64
	flowsRegistered, flowsAuto, flowsReleased        atomic.Uint64
	flowsReaped, registerBatches, flowsRefused       atomic.Uint64
	flowLimitHits                                    atomic.Uint64
	txHeld, txHeldSent, txHeldDrops                  atomic.Uint64
	flowsHeld, flowsResumed, advisoryEvents          atomic.Uint64
}

func (s *stats) snapshot() Stats {
	return Stats{
		RxPackets: s.rxPackets.Load(), RxBytes: s.rxBytes.Load(), RxPolls: s.rxPolls.Load(), RxDropped: s.rxDropped.Load(),
		RxRetractedACKs: s.rxRetractedACKs.Load(), RxBadChecksum: s.rxBadChecksum.Load(),
		TxPackets: s.txPackets.Load(), TxBytes: s.txBytes.Load(), TxSends: s.txSends.Load(), TxGSO: s.txGSO.Load(),
		TxWaits: s.txWaits.Load(), TxNoFlow: s.txNoFlow.Load(), TxRegisterFail: s.txRegisterFail.Load(),
		TxOversize: s.txOversize.Load(), TxQueueFull: s.txQueueFul.Load(), TxClosed: s.txClosed.Load(),
		TxHandshake:     s.txHandshake.Load(),
		FlowsRegistered: s.flowsRegistered.Load(), FlowsAuto: s.flowsAuto.Load(),
		FlowsReleased: s.flowsReleased.Load(), FlowsReaped: s.flowsReaped.Load(),
		RegisterBatches: s.registerBatches.Load(), FlowsRefused: s.flowsRefused.Load(), FlowLimitHits: s.flowLimitHits.Load(),
		TxHeld: s.txHeld.Load(), TxHeldSent: s.txHeldSent.Load(), TxHeldDrops: s.txHeldDrops.Load(),
		FlowsHeld: s.flowsHeld.Load(), FlowsResumed: s.flowsResumed.Load(), AdvisoryEvents: s.advisoryEvents.Load(),
	}
}
