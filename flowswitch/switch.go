package flowswitch

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/neigh"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/reassembly"
)

const (
	// DefaultBatch is the input batch size (docs/design.md §5.1): 32 frames amortise
	// the per-batch work (one Read, one Deliver per channel) while keeping
	// the batch's frames (32 × 1518 bytes) well inside a 64 KiB L2 cache.
	DefaultBatch = 32
	// MaxBatch is the largest input batch docs/design.md §5.1 allows.
	MaxBatch = 256
	// HostPort is the port ID of the kernel stack: frames of no flow go to
	// Options.HostLink. It is reserved: AddPort never returns it and no
	// flow may be registered for it.
	HostPort flow.PortID = 0
	// idleWait is Options.IdleWait's default: the longest wait Round and
	// Service return when no timed work is due, so that a caller that
	// sleeps on the link alone still looks at its channels ~100 times/s.
	idleWait = 10 * time.Millisecond
)

var (
	// ErrBadOptions: Options are invalid (no link, batch out of range).
	ErrBadOptions = errors.New("flowswitch: bad options")
	// ErrNoPort: a port AddPort did not return, or one already removed.
	ErrNoPort = errors.New("flowswitch: no such port")
)

// Options configures a Switch.
type Options struct {
	// Link is the device port. The Switch is its only reader and writer.
	Link netif.Link
	// HostLink, if set, is the host port: a link toward the kernel's own
	// stack (a TAP device, or a memif pair in tests). Frames of no flow
	// (ARP included) are written to it unchanged instead of being dropped,
	// and frames read from it are written to Link unchanged: the kernel's
	// traffic is trusted and not checked. It must have Link's LinkType and
	// MTU. The Switch is its only reader and writer.
	HostLink netif.Link
	// TxQueue, if set, receives the packets that passed the transmit
	// checks instead of Link (see TxQueue).
	TxQueue TxQueue
	// LocalAddrs are the interface's addresses (flow.Options.LocalAddrs).
	LocalAddrs []netip.Addr
	// Batch is the most frames read per input batch: 1..MaxBatch, 0 means
	// DefaultBatch.
	Batch int
	// FlowBatchLimit is the most packets of one flow released together:
	// when a flow's queue reaches it, the queue is processed at once.
	// 1..Batch, 0 means Batch.
	FlowBatchLimit int
	// SrcMAC and DstMAC are the Ethernet addresses TxOnce writes on every
	// frame of a packet.Ethernet link (the nexus, not the app, writes the
	// L2 header). Unused on RawIP links. A non-zero DstMAC is a static
	// next hop for every packet (a point-to-point wire, the memif tests and
	// benches); with DstMAC zero and SrcMAC set, the switch resolves each
	// packet's next hop itself (l2.go).
	SrcMAC, DstMAC [6]byte
	// Neighbors, if set, resolves next hops on an Ethernet link: the
	// switch hands it every frame it receives first (HandleFrame) and,
	// unless DstMAC is set, resolves the next hop of every packet it
	// transmits (l2.go). A neigh.Resolver answers and asks ARP and NDP
	// itself (a link no kernel shares); a neigh.Routes follows the kernel
	// that shares the link (neigh/kernel). Nil means a Resolver the switch
	// builds from SrcMAC and LocalAddrs when the link is Ethernet, SrcMAC
	// is set and DstMAC is not; else no resolution. The Switch calls it
	// from its datapath only; others may call its (locked) methods too.
	Neighbors neigh.NextHops
	// HostAddrs are the addresses among LocalAddrs that the kernel behind
	// HostLink owns as well and answers ARP and NS for itself: the
	// resolver does not answer for them (one answer, the kernel's), and
	// requests for them go to the host port. See l2.go.
	HostAddrs []netip.Addr
	// Regulation, if set, makes the transmit queue the AQM of docs/design.md §7
	// (regulation.go): fq_codel with flow advisories, round-robin transmit
	// sync, adaptive receive batching and stall detection. Nil keeps the
	// plain path: TxOnce writes to the link (or TxQueue) at once.
	Regulation *RegulationOptions
	// LinkRate is the device's rate in bits per second of frame bytes.
	// With Regulation, the queue is paced at it (so the backlog builds in
	// the AQM, not in the device's FIFO); 0 means unpaced (the device
	// takes what it can, a full device tail-drops).
	LinkRate int64
	// Now is the switch's clock: monotonic nanoseconds from any origin.
	// Nil means the time since New. Tests pass a synthetic clock.
	Now func() int64
	// IdleWait is the longest wait Round and Service return when no timed
	// work is due: the longest a caller that sleeps on the link alone (not
	// on the apps' channels, as the nexus's worker does) may sleep before
	// it looks at its channels again. 0 means 10 ms (about 100
	// wake-ups/s when idle).
	IdleWait time.Duration
	// AdvisorySlots is the size of each port's flow-advisory table
	// (flow.Options.AdvisorySlots): the most flows of a port with an
	// advisory at a time; later ones get flow.NoAdvisory and are regulated
	// by early drops. Give each channel at least as many advisory entries
	// (channel.Options.Advisories). 0 means flow.DefaultAdvisorySlots.
	AdvisorySlots int
	// MaxFlows and MaxPortFlows bound the flows of the switch and of one
	// port (flow.Options): past them Register fails with
	// flow.ErrTooManyFlows, counted in Stats.FlowLimits. 0 means
	// flow.DefaultMaxFlows and flow.DefaultMaxPortFlows.
	MaxFlows, MaxPortFlows int
	// PortTaken, if set, reports whether a kernel socket holds a local
	// port when the kernel's stack shares the device
	// (flow.Options.PortTaken): Register then refuses the port with
	// flow.ErrPortInUse instead of stealing the kernel's traffic.
	PortTaken func(proto uint8, port uint16) bool
	// MergeLimit is the largest TCP super packet, as an IP length
	// (docs/design.md §5.4, merge.go): at most MaxMergeLimit, 0 means
	// DefaultMergeLimit, negative disables merging. A super packet also
	// fits the destination channel's buffers.
	MergeLimit int
	// AnswerAsHost makes the switch answer, as a host would, the packets
	// of no flow sent to LocalAddrs: echo requests, and TCP and UDP to
	// closed ports (answer.go). Only for a link on which no kernel stack
	// owns those addresses (TUN, an AF_PACKET tap on an interface without
	// kernel addresses); not with a HostLink.
	AnswerAsHost bool
	// Reassembly bounds the IP fragments held for reassembly (frag.go);
	// nil means the reassembly package's defaults. FrameLen is the link's.
	Reassembly *reassembly.Options
}

// Stats are the switch's counters since New. All count packets except
// Batches, FlowBatches, Deliveries and the byte counts.
type Stats struct {
	Packets     uint64 // frames read from the link
	Batches     uint64 // input batches holding at least one frame
	FlowBatches uint64 // flow batches released (one channel.Alloc each)
	Deliveries  uint64 // channel.Deliver calls: at most one per channel per input batch
	Delivered   uint64 // packets put on an RX ring
	NoFlow      uint64 // packets of no registered flow (ARP included), dropped: no host link
	KernelKept  uint64 // frames of no flow, or of an EtherType Parse does not know, the kernel has its own copy of (netif.KernelTap): passed, not dropped
	Oversize    uint64 // packets longer than the destination channel's buffers, dropped
	AllocFails  uint64 // packets dropped because their channel's pool had no buffer
	RxRingDrops uint64 // packets tail-dropped on full RX rings (sum of the channels' RxDrops)
	// RxBudgetDrops and RxRateDrops are packets refused before the copy
	// by a channel's receive budget per input batch and its receive token
	// bucket (rxlimit.go).
	RxBudgetDrops, RxRateDrops uint64
	// ListenDrops are packets of TCP listener flows refused before the
	// copy, their source over its share of the RX ring (rxlisten.go).
	ListenDrops uint64
	// SuperPackets counts the TCP super packets delivered: formed by
	// merging (merge.go), or read whole from a link that carries them
	// (rxgso.go); Merged the segments absorbed into merged ones after
	// each one's first, so a flow batch of k packets becomes k - Merged
	// output packets (and more when a super packet is Split).
	SuperPackets uint64
	Merged       uint64
	// Super packets the link delivered whole but that did not fit their
	// channel's buffers (rxgso.go): Split were cut into SplitPieces
	// pieces that do; SplitCsumDrops were dropped instead, their
	// checksum wrong.
	Split, SplitPieces, SplitCsumDrops uint64
	// TxCsumCompleted counts the packets whose TCP or UDP checksum their
	// app left to the wire (channel.FlagCsumPartial) and the switch
	// completed, on their way to a link that is not a netif.TrustedWire.
	TxCsumCompleted uint64
	// ParseDrops counts the frames packet.Parse rejected, indexed by the
	// packet.Reason; in JSON, an object keyed by the reasons' names.
	ParseDrops ParseDrops
	// Reassembled counts the datagrams reassembled from fragments and
	// delivered to an app (frag.go), as their fragments; Reassembly
	// holds the reassembler's own counters, its drops by reason.
	Reassembled uint64
	Reassembly  reassembly.Stats
	// ICMPErrors counts the ICMP and ICMPv6 errors steered by the flow
	// they quote (frag.go), delivered or not.
	ICMPErrors uint64
	// Answers counts what Options.AnswerAsHost answered (answer.go).
	Answers AnswerStats

	// Host port (Options.HostLink).
	HostDelivered uint64 // frames of no flow the host link accepted
	HostDrops     uint64 // frames of no flow the host link refused (full), counted by it too
	HostTx        uint64 // frames read from the host link and accepted by the device link

	PortsRemoved uint64 // ports removed, by RemovePort or because their channel was defunct

	// FlowLimits counts the flows the table's limits refused, and those
	// registered without an advisory slot (flow.Limits).
	FlowLimits flow.Limits

	TxPackets uint64 // packets TxOnce handed to the link (or TxQueue, or the AQM), which accepted them (a super packet once)
	TxBytes   uint64 // their L3 bytes
	// Super packets on transmit (txgso.go): TxSuper went to the link
	// whole (WriteGSO); TxSegmented were cut by the switch, into
	// TxSegments segments.
	TxSuper, TxSegmented, TxSegments uint64
	TxDrops                          TxDrops // packets TxOnce rejected, one counter per check

	L2         L2Stats         // neighbour resolution (l2.go); zero without a resolver
	Regulation RegulationStats // the AQM and its friends (regulation.go); zero without Regulation
}

// port is a user port: one app's channel and the buffers staged for it in
// the current input batch.
type port struct {
	id      flow.PortID      // immutable
	ch      *channel.Channel // immutable
	bufSize int              // the channel's buffer size; immutable
	pending []channel.Buf    // staged for the end-of-batch Deliver; cap Batch
	touched bool             // pending holds buffers (it is in Switch.touchedPorts)
	tx      portTx           // transmit state (tx.go)
	reg     portReg          // regulation state (regulation.go)
	rx      portRx           // receive limits (rxlimit.go)

	delivered uint64 // packets put on its RX ring
}

// flowQueue is one flow's batch queue within an input batch.
type flowQueue struct {
	e    *flow.Entry
	p    *port
	pkts []int32 // indices into the input batch, in arrival order; cap FlowBatchLimit
}

// Switch is a flowswitch. See the package doc for which methods may run
// concurrently.
type Switch struct {
	// mu serializes the datapath (one input batch, one round of TX) with
	// the control methods. Every field below is guarded by it; the
	// immutable ones are marked.
	mu sync.Mutex

	link     netif.Link      // immutable
	host     netif.Link      // immutable; nil without a host port
	kernTap  bool            // immutable; link is a netif.KernelTap: frames of no flow are the kernel's
	trusted  bool            // immutable; link is a netif.TrustedWire: checksums stay as apps left them
	txq      TxQueue         // immutable; nil: TxOnce writes to link
	linkType packet.LinkType // immutable
	batch    int             // immutable
	limit    int             // immutable: FlowBatchLimit
	table    *flow.Table
	ports    []*port // indexed by PortID; nil for HostPort and removed ports

	// Input batch, allocated once by New.
	bufs   [][]byte
	sizes  []int
	start  []int32           // start of the L3 packet in bufs[i]
	length []int32           // L3 packet length (the IP length)
	flags  []packet.TCPFlags // TCP flags, for the flow's counters
	rx     []packet.Parsed   // each frame's parse, for the TCP merge
	keys   []packet.Key      // keys[:m]: the distinct RX keys of consecutive IP frames
	ents   []*flow.Entry     // ents[j]: keys[j]'s flow, or nil
	cand   []int32           // cand[:c]: the frames that parsed as IP, in order
	keyOf  []int32           // keyOf[x]: the index in keys of cand[x]'s key
	// Frames of no flow for the host link: marked by index, written in
	// order at the end of the batch.
	hostMark []bool // len Batch
	nHost    int
	toHost   [][]byte // cap Batch

	mergeLimit int           // immutable: bytes, 0 when merging is disabled
	runs       []int32       // scratch for planRuns; cap FlowBatchLimit
	splitBuf   []channel.Buf // scratch for rxSplit's Alloc

	// Per-batch state, reset by rxOnce; slices keep their capacity.
	queues []flowQueue // queues[:nq] are the flows touched in this batch
	nq     int
	// gen names the current input batch: an entry whose Mark().Gen equals
	// it has its queue at queues[Mark().Slot]. It only grows (2^64 batches
	// do not wrap), so a mark left from an earlier batch never matches.
	gen          uint64
	touchedPorts []*port
	allocBuf     []channel.Buf // scratch for one flow batch's Alloc; len limit

	hostIn hostState   // host → device scratch (host.go)
	frag   fragState   // reassembly (frag.go)
	ans    answerState // answering as a host (answer.go)
	parsed packet.Parsed
	stats  Stats
	tx     txState     // transmit scratch, allocated once by New (tx.go)
	l2     l2State     // neighbour resolution (l2.go)
	reg    *regState   // nil without Options.Regulation (regulation.go)
	capt   capState    // packet captures (capture.go)
	hist   hists       // histograms (hist.go)
	listen listenShare // listener flows' admission (rxlisten.go)
	// rxBudget is RegulationOptions.RxBudget (rxlimit.go); 0: none. Immutable.
	rxBudget int

	now   func() int64 // immutable: Options.Now
	epoch time.Time    // immutable: the origin of the default clock
	idle  int64        // immutable: Options.IdleWait in ns
}

// New returns a Switch reading from opts.Link. It allocates the input batch's
// buffers and per-flow queues here, so that the datapath does not allocate.
func New(opts Options) (*Switch, error) {
	if opts.Link == nil {
		return nil, fmt.Errorf("%w: no link", ErrBadOptions)
	}
	if opts.Batch == 0 {
		opts.Batch = DefaultBatch
	}
	if opts.Batch < 1 || opts.Batch > MaxBatch {
		return nil, fmt.Errorf("%w: batch %d not in 1..%d", ErrBadOptions, opts.Batch, MaxBatch)
	}
	if opts.FlowBatchLimit == 0 {
		opts.FlowBatchLimit = opts.Batch
	}
	if opts.FlowBatchLimit < 1 || opts.FlowBatchLimit > opts.Batch {
		return nil, fmt.Errorf("%w: flow batch limit %d not in 1..%d", ErrBadOptions, opts.FlowBatchLimit, opts.Batch)
	}
	if opts.MergeLimit > MaxMergeLimit {
		return nil, fmt.Errorf("%w: merge limit %d above %d", ErrBadOptions, opts.MergeLimit, MaxMergeLimit)
	}
	if opts.AdvisorySlots < 0 || opts.MaxFlows < 0 || opts.MaxPortFlows < 0 {
		return nil, fmt.Errorf("%w: advisory slots %d, max flows %d or max port flows %d < 0",
			ErrBadOptions, opts.AdvisorySlots, opts.MaxFlows, opts.MaxPortFlows)
	}
	lt := opts.Link.LinkType()
	if h := opts.HostLink; h != nil && (h.LinkType() != lt || h.MTU() != opts.Link.MTU()) {
		return nil, fmt.Errorf("%w: host link %s is %v with MTU %d, device link %s is %v with MTU %d",
			ErrBadOptions, h.Name(), h.LinkType(), h.MTU(), opts.Link.Name(), lt, opts.Link.MTU())
	}
	t, err := flow.New(flow.Options{LocalAddrs: opts.LocalAddrs, AdvisorySlots: opts.AdvisorySlots,
		MaxFlows: opts.MaxFlows, MaxPortFlows: opts.MaxPortFlows, PortTaken: opts.PortTaken})
	if err != nil {
		return nil, fmt.Errorf("flowswitch: %w", err)
	}
	n := opts.Batch
	s := &Switch{
		link:     opts.Link,
		host:     opts.HostLink,
		kernTap:  isKernelTap(opts.Link),
		trusted:  isTrustedWire(opts.Link),
		txq:      opts.TxQueue,
		linkType: lt,
		batch:    n,
		limit:    opts.FlowBatchLimit,
		table:    t,
		ports:    []*port{HostPort: nil},
		bufs:     frameBufs(n, rxFrameLen(opts.Link)), // super packets whole (rxgso.go)
		sizes:    make([]int, n),
		start:    make([]int32, n),
		length:   make([]int32, n),
		flags:    make([]packet.TCPFlags, n),
		rx:       make([]packet.Parsed, n),
		keys:     make([]packet.Key, n),
		ents:     make([]*flow.Entry, n),
		cand:     make([]int32, n),
		keyOf:    make([]int32, n),
		runs:     make([]int32, 0, opts.FlowBatchLimit),
		queues:   make([]flowQueue, n),
		allocBuf: make([]channel.Buf, opts.FlowBatchLimit),
		// The seed defeats crafted collisions of source buckets: a
		// per-switch random value, not a secret key.
		listen: newListenShare(rand.Uint64(), opts.FlowBatchLimit),
	}
	for i := range s.queues {
		s.queues[i].pkts = make([]int32, 0, opts.FlowBatchLimit)
	}
	if s.host != nil {
		s.toHost = make([][]byte, 0, n)
		s.hostMark = make([]bool, n)
		s.hostIn.init(n, netif.MaxFrameLen(s.host.MTU(), lt))
	}
	s.mergeLimit = mergeLimit(opts.MergeLimit)
	s.hist.init()
	s.tx.init(opts, lt, opts.Link.MTU())
	if opts.IdleWait < 0 {
		return nil, fmt.Errorf("%w: negative idle wait %v", ErrBadOptions, opts.IdleWait)
	}
	s.idle = int64(opts.IdleWait)
	if s.idle == 0 {
		s.idle = int64(idleWait)
	}
	s.epoch, s.now = time.Now(), opts.Now
	if s.now == nil {
		s.now = s.sinceEpoch
	}
	if err := s.l2.init(opts, s); err != nil {
		return nil, err
	}
	if err := s.frag.init(opts.Link, n, opts.Reassembly); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadOptions, err)
	}
	if opts.AnswerAsHost && opts.HostLink != nil {
		return nil, fmt.Errorf("%w: AnswerAsHost with a HostLink: the kernel behind it answers", ErrBadOptions)
	}
	s.ans.init(opts.AnswerAsHost, netif.MaxFrameLen(opts.Link.MTU(), lt), s.now())
	if opts.Regulation != nil {
		if opts.TxQueue != nil {
			return nil, fmt.Errorf("%w: Regulation and TxQueue both set: the AQM is the transmit queue", ErrBadOptions)
		}
		if s.reg, err = newRegState(opts, lt, s.now); err != nil {
			return nil, err
		}
		if s.rxBudget = opts.Regulation.RxBudget; s.rxBudget < 0 {
			return nil, fmt.Errorf("%w: negative RxBudget %d", ErrBadOptions, s.rxBudget)
		}
	} else if opts.LinkRate != 0 {
		return nil, fmt.Errorf("%w: LinkRate %d without Regulation: only the AQM is paced", ErrBadOptions, opts.LinkRate)
	}
	return s, nil
}

// sinceEpoch is the default clock: monotonic ns since New.
func (s *Switch) sinceEpoch() int64 { return int64(time.Since(s.epoch)) }

// frameBufs returns n buffers of size bytes each, in one allocation, at a
// stride rounded up to 64 bytes: when the allocation starts on a cache line
// (Go page-aligns those above 32 KiB, as a batch of frames is), so does
// every buffer, and a small frame touches as few lines as it can.
func frameBufs(n, size int) [][]byte {
	stride := (size + 63) &^ 63
	mem := make([]byte, n*stride)
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = mem[i*stride : i*stride+size : i*stride+size]
	}
	return bufs
}

// Stats returns the counters. RxRingDrops is summed from the channels.
func (s *Switch) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.statsLocked()
}

func (s *Switch) statsLocked() Stats {
	st := s.stats
	st.L2 = s.l2.stats
	st.FlowLimits = s.table.Limits()
	st.Reassembly = s.frag.r.Stats()
	st.Answers = s.ans.stats
	if s.reg != nil {
		st.Regulation = s.reg.statsNow()
	}
	for _, p := range s.ports {
		if p != nil {
			st.RxRingDrops += p.ch.Counters().RxDrops
		}
	}
	return st
}

// Reads says which links a Round reads: a caller that shares a link's
// reader role (netif.Link allows one reader at a time) reads it only while
// it holds the role, as the nexus's worker does while its link waiter
// sleeps in Wait.
type Reads uint8

const (
	ReadDevice Reads = 1 << iota // Options.Link
	ReadHost                     // Options.HostLink, if set
)

// Round runs one datapath round under the switch's lock, taken once: one
// input batch from the device (RxOnce), one transmit round over every port
// (TxSync), the host link's frames to the device (HostOnce), the TxQueue's
// flush, and the timed work (Service: the paced AQM, held receive frames,
// neighbour resolution, stall checks). It is the round nexus.Nexus's
// worker runs, the one loop that moves packets; the caller then syncs
// every port's channel (channel.Channel.Sync) and removes the ports whose
// channel turned defunct, and sleeps (on the link, the apps) for at most
// wait when nothing moved (wait 0: call again at once). moved counts the
// frames and packets the round moved; err is a link's or the TxQueue's,
// and ends the round where it happened.
func (s *Switch) Round(read Reads) (moved int, wait time.Duration, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	moved, err = s.round(read)
	return moved, time.Duration(s.nextWake(s.now())), err
}

// round is Round with s.mu held.
func (s *Switch) round(read Reads) (int, error) {
	n := 0
	if read&ReadDevice != 0 {
		k, err := s.rxOnce()
		if n += k; err != nil {
			return n, err
		}
	}
	k, err := s.txSync()
	if n += k; err != nil {
		return n, err
	}
	if read&ReadHost != 0 {
		k, err := s.hostOnce()
		if n += k; err != nil {
			return n, err
		}
	}
	if s.txq != nil {
		if err := s.txq.Flush(); err != nil {
			return n, fmt.Errorf("flowswitch tx queue: %w", err)
		}
	}
	k, err = s.service(s.now())
	return n + k, err
}

// Service runs the switch's timed work once — the paced transmit queue,
// receive frames held for a fuller batch (adaptive batching), neighbour
// resolution (solicitations, packets waiting for a next hop) and the stall
// check of the ports' channels — and returns how long the caller may sleep
// before calling it again (at most Options.IdleWait; 0: call again at once).
// Round calls it every round; a caller that drives the datapath itself
// (RxOnce, TxSync) must call it too, and must not sleep longer than it
// says, or held frames and queued packets wait. Errors are the link's.
func (s *Switch) Service() (time.Duration, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	_, err := s.service(now)
	return time.Duration(s.nextWake(s.now())), err
}

// service is Service with s.mu held; it returns how many frames it moved.
func (s *Switch) service(now int64) (int, error) {
	n, err := s.rxHeldDue(now)
	if err != nil {
		return n, err
	}
	if s.reg != nil {
		k, err := s.regFlush(now)
		n += k
		if err != nil {
			return n, err
		}
		s.stallCheck(now)
	}
	s.frag.r.Expire(now)
	k, err := s.l2.pollDue(s, now)
	n += k
	return n, err
}

// nextWake returns in how many ns the timed work is next due (0: now), at
// most the idle wait.
func (s *Switch) nextWake(now int64) int64 {
	w := s.idle
	if s.reg != nil {
		w = min(w, s.reg.wake(now))
	}
	if s.l2.nb != nil {
		w = min(w, s.l2.lastPoll+int64(s.l2.pollEvery())-now)
	}
	return max(w, 0)
}
