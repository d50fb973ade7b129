package flowswitch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/packet"
)

const (
	// DefaultBatch is the input batch size (DESIGN §5.1): 32 frames amortise
	// the per-batch work (one Read, one Deliver per channel) while keeping
	// the batch's frames (32 × 1518 bytes) well inside a 64 KiB L2 cache.
	DefaultBatch = 32
	// MaxBatch is the largest input batch DESIGN §5.1 allows.
	MaxBatch = 256
	// HostPort is the port of the kernel stack. It is reserved: AddPort
	// never returns it, and no flow is delivered to it yet (see the TODO in
	// the package doc).
	HostPort flow.PortID = 0
	// idleWait is how long Run blocks in Link.Wait when the link is idle
	// before it looks at its context and syncs the channels again: short
	// enough that a cancelled context or a freed buffer is noticed within
	// ~10 ms, long enough that an idle switch costs about 100 wake-ups/s.
	idleWait = 10 * time.Millisecond
)

var (
	// ErrBadOptions: Options are invalid (no link, batch out of range).
	ErrBadOptions = errors.New("flowswitch: bad options")
	// ErrNoPort: Register named a port AddPort did not return.
	ErrNoPort = errors.New("flowswitch: no such port")
)

// Options configures a Switch.
type Options struct {
	// Link is the device port. The Switch is its only reader.
	Link netif.Link
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
	// L2 header). Unused on RawIP links.
	SrcMAC, DstMAC [6]byte
	// MergeLimit is the largest TCP super packet, as an IP length
	// (DESIGN §5.4, merge.go): at most MaxMergeLimit, 0 means
	// DefaultMergeLimit, negative disables merging. A super packet also
	// fits the destination channel's buffers.
	MergeLimit int
}

// Stats are the switch's counters since New. All count packets except
// Batches, FlowBatches and Deliveries.
type Stats struct {
	Packets     uint64 // frames read from the link
	Batches     uint64 // input batches holding at least one frame
	FlowBatches uint64 // flow batches released (one channel.Alloc each)
	Deliveries  uint64 // channel.Deliver calls: at most one per channel per input batch
	Delivered   uint64 // packets put on an RX ring
	NoFlow      uint64 // packets of no registered flow (ARP included), dropped
	Oversize    uint64 // packets longer than the destination channel's buffers, dropped
	AllocFails  uint64 // packets dropped because their channel's pool had no buffer
	RxRingDrops uint64 // packets tail-dropped on full RX rings (sum of the channels' RxDrops)
	// SuperPackets counts TCP super packets formed (merge.go); Merged the
	// segments absorbed into them after each one's first, so a flow batch
	// of k packets becomes k - Merged output packets.
	SuperPackets uint64
	Merged       uint64
	// ParseDrops counts the frames packet.Parse rejected, indexed by the
	// packet.Reason.
	ParseDrops [packet.NumReasons]uint64

	TxPackets uint64  // packets TxOnce handed to the link, which accepted them
	TxBytes   uint64  // their L3 bytes
	TxDrops   TxDrops // packets TxOnce rejected, one counter per check
}

// port is a user port: one app's channel and the buffers staged for it in
// the current input batch.
type port struct {
	ch      *channel.Channel // immutable
	bufSize int              // the channel's buffer size; immutable
	pending []channel.Buf    // staged for the end-of-batch Deliver; cap Batch
	touched bool             // pending holds buffers (it is in Switch.touchedPorts)
}

// flowQueue is one flow's batch queue within an input batch.
type flowQueue struct {
	e    *flow.Entry
	p    *port
	pkts []int32 // indices into the input batch, in arrival order; cap FlowBatchLimit
}

// Switch is a flowswitch. It is owned by one goroutine (see the package doc).
type Switch struct {
	link     netif.Link      // immutable
	linkType packet.LinkType // immutable
	batch    int             // immutable
	limit    int             // immutable: FlowBatchLimit
	table    *flow.Table
	ports    []*port // indexed by PortID; ports[HostPort] is nil

	// Input batch, allocated once by New.
	bufs   [][]byte
	sizes  []int
	start  []int32           // start of the L3 packet in bufs[i]
	length []int32           // L3 packet length (the IP length)
	flags  []packet.TCPFlags // TCP flags, for the flow's counters
	rx     []packet.Parsed   // each frame's parse, for the TCP merge

	mergeLimit int     // immutable: bytes, 0 when merging is disabled
	runs       []int32 // scratch for planRuns; cap FlowBatchLimit

	// Per-batch state, reset by RxOnce; slices keep their capacity.
	queues       []flowQueue // queues[:nq] are the flows touched in this batch
	nq           int
	queueOf      map[*flow.Entry]int32 // entry → index in queues, this batch only
	touchedPorts []*port
	allocBuf     []channel.Buf // scratch for one flow batch's Alloc; len limit

	parsed packet.Parsed
	stats  Stats
	tx     txState // transmit scratch, allocated once by New (tx.go)
}

// New returns a Switch reading from opts.Link. It allocates the input batch's
// buffers and per-flow queues here, so that RxOnce does not allocate.
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
	t, err := flow.New(flow.Options{LocalAddrs: opts.LocalAddrs})
	if err != nil {
		return nil, fmt.Errorf("flowswitch: %w", err)
	}
	n := opts.Batch
	s := &Switch{
		link:     opts.Link,
		linkType: opts.Link.LinkType(),
		batch:    n,
		limit:    opts.FlowBatchLimit,
		table:    t,
		ports:    []*port{HostPort: nil},
		bufs:     make([][]byte, n),
		sizes:    make([]int, n),
		start:    make([]int32, n),
		length:   make([]int32, n),
		flags:    make([]packet.TCPFlags, n),
		rx:       make([]packet.Parsed, n),
		runs:     make([]int32, 0, opts.FlowBatchLimit),
		queues:   make([]flowQueue, n),
		queueOf:  make(map[*flow.Entry]int32, n),
		allocBuf: make([]channel.Buf, opts.FlowBatchLimit),
	}
	frameLen := netif.MaxFrameLen(opts.Link.MTU(), s.linkType)
	mem := make([]byte, n*frameLen)
	for i := range s.bufs {
		s.bufs[i] = mem[i*frameLen : (i+1)*frameLen : (i+1)*frameLen]
	}
	for i := range s.queues {
		s.queues[i].pkts = make([]int32, 0, opts.FlowBatchLimit)
	}
	s.mergeLimit = mergeLimit(opts.MergeLimit)
	s.tx.init(opts, s.linkType, opts.Link.MTU())
	return s, nil
}

// AddPort binds a new user port to ch and returns its ID. The Switch does not
// own ch: the caller closes it, after the Switch stopped using it.
func (s *Switch) AddPort(ch *channel.Channel) flow.PortID {
	id := flow.PortID(len(s.ports))
	s.ports = append(s.ports, &port{
		ch:      ch,
		bufSize: ch.Pool().BufferSize(),
		pending: make([]channel.Buf, 0, s.batch),
	})
	return id
}

// Register registers a flow for port (see flow.Table.Register for the
// checks and errors). The port must have been returned by AddPort.
func (s *Switch) Register(p flow.PortID, key packet.Key, kind flow.Kind) (*flow.Entry, error) {
	if p == HostPort || int(p) >= len(s.ports) {
		return nil, fmt.Errorf("%w: %d", ErrNoPort, p)
	}
	return s.table.Register(flow.Request{Port: p, Key: key, Kind: kind})
}

// Table returns the switch's flow table, owned by the same goroutine.
func (s *Switch) Table() *flow.Table { return s.table }

// Stats returns the counters. RxRingDrops is summed from the channels.
func (s *Switch) Stats() Stats {
	st := s.stats
	for _, p := range s.ports {
		if p != nil {
			st.RxRingDrops += p.ch.Counters().RxDrops
		}
	}
	return st
}

// RxOnce reads one input batch from the link and delivers it (see the package
// doc) and returns how many frames it read. It never blocks. An error is the
// link's (netif.ErrClosed once closed); a frame too large for its buffer
// (io.ErrShortBuffer) is the link's drop, counted there, and not an error here.
func (s *Switch) RxOnce() (int, error) {
	n, err := s.link.Read(s.bufs, s.sizes)
	if err != nil && !errors.Is(err, io.ErrShortBuffer) {
		return n, fmt.Errorf("flowswitch rx: %w", err)
	}
	if n == 0 {
		return 0, nil
	}
	s.stats.Packets += uint64(n)
	s.stats.Batches++

	var (
		prevKey   packet.Key
		prevQueue int32 = -1
	)
	for i := range n {
		p := &s.rx[i]
		if err := packet.Parse(s.bufs[i][:s.sizes[i]], s.linkType, p); err != nil {
			s.stats.ParseDrops[packet.ReasonOf(err)]++
			continue
		}
		if p.IPVersion == 0 { // ARP: the host port's business
			s.stats.NoFlow++
			continue
		}
		s.start[i] = int32(p.L3Off)
		s.length[i] = int32(p.IPLen)
		s.flags[i] = p.Flags
		k := p.RxKey()
		q := prevQueue
		if q < 0 || k != prevKey {
			q = s.queueFor(k)
			prevKey, prevQueue = k, q
		}
		if q < 0 {
			s.stats.NoFlow++
			continue
		}
		fq := &s.queues[q]
		fq.pkts = append(fq.pkts, int32(i))
		if len(fq.pkts) == s.limit {
			s.release(fq)
		}
	}
	for i := range s.queues[:s.nq] {
		if fq := &s.queues[i]; len(fq.pkts) > 0 {
			s.release(fq)
		}
	}
	for _, p := range s.touchedPorts {
		if len(p.pending) > 0 { // nothing staged when every Alloc failed
			k := p.ch.Deliver(p.pending)
			s.stats.Deliveries++
			s.stats.Delivered += uint64(k)
		}
		clear(p.pending) // drop the references into shared memory
		p.pending = p.pending[:0]
		p.touched = false
	}
	clear(s.touchedPorts)
	s.touchedPorts = s.touchedPorts[:0]
	for i := range s.queues[:s.nq] {
		s.queues[i].e, s.queues[i].p = nil, nil
	}
	s.nq = 0
	clear(s.queueOf)
	return n, nil
}

// queueFor returns the index of k's flow queue in this batch, creating it on
// the flow's first packet, or -1 if k has no flow (or its port is gone).
func (s *Switch) queueFor(k packet.Key) int32 {
	e := s.table.Lookup(k)
	if e == nil {
		return -1
	}
	if q, ok := s.queueOf[e]; ok {
		return q
	}
	id := e.Port()
	if id == HostPort || int(id) >= len(s.ports) {
		return -1
	}
	q := int32(s.nq)
	s.nq++
	fq := &s.queues[q]
	fq.e, fq.p, fq.pkts = e, s.ports[id], fq.pkts[:0]
	s.queueOf[e] = q
	return q
}

// release processes one flow batch: one Alloc on the owner's channel for all
// of it, a copy of each packet (or of each run of TCP segments merged into a
// super packet, merge.go), and the buffers staged for the end-of-batch
// Deliver. The queue is emptied, so later packets of the flow in the same
// input batch form a new flow batch.
func (s *Switch) release(fq *flowQueue) {
	p := fq.p
	s.stats.FlowBatches++
	runs := s.planRuns(fq.pkts, p.bufSize)
	out := s.allocBuf[:len(runs)]
	got := p.ch.Alloc(out)
	at := 0 // fq.pkts[at] is the first packet of run j
	for j, rl := range runs {
		seg := fq.pkts[at : at+int(rl)]
		at += int(rl)
		if j >= got {
			s.stats.AllocFails += uint64(rl)
			continue
		}
		b := out[j]
		if rl > 1 {
			b.Data = b.Data[:s.merge(b.Data, seg)]
			s.stats.SuperPackets++
			s.stats.Merged += uint64(rl - 1)
		} else {
			i := seg[0]
			start, n := int(s.start[i]), int(s.length[i])
			if n > len(b.Data) {
				s.stats.Oversize++
				p.ch.Release(out[j : j+1])
				continue
			}
			copy(b.Data, s.bufs[i][start:start+n])
			b.Data = b.Data[:n]
		}
		b.Flags = 0
		for _, i := range seg {
			fq.e.CountIn(int(s.length[i]), s.flags[i])
		}
		p.pending = append(p.pending, b)
	}
	clear(out)
	fq.pkts = fq.pkts[:0]
	if !p.touched {
		p.touched = true
		s.touchedPorts = append(s.touchedPorts, p)
	}
}

// Run loops on RxOnce until ctx is done, syncing every port's channel once per
// loop and waiting on the link when a loop read nothing. It owns the Switch
// while it runs. It returns ctx.Err() when ctx is done, or the link's error.
func (s *Switch) Run(ctx context.Context) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := s.RxOnce()
		if err != nil {
			return err
		}
		t, err := s.TxSync()
		if err != nil {
			return err
		}
		n += t
		for _, p := range s.ports {
			if p != nil {
				// A defunct channel fails only itself; its
				// error is the channel's business.
				_ = p.ch.Sync()
			}
		}
		if n == 0 {
			if err := s.link.Wait(idleWait); err != nil {
				return fmt.Errorf("flowswitch wait: %w", err)
			}
		}
	}
}
