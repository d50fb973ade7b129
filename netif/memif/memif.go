// Package memif is an in-memory link pair: a wire with a [netif.Link] at each
// end, the embedded default device of docs/design.md §9 and the fake that tests and
// benchmarks use. Frames written on one end are read on the other, in order.
//
// Invariants:
//
//   - Each direction is a ring of QueueLen fixed slots of
//     netif.MaxFrameLen(MTU, LinkType) bytes, allocated by NewPair. Write
//     copies frames in, Read copies them out; no frame is allocated, and
//     neither end ever holds a caller's buffer after a call returns.
//
//   - One lock acquisition per batch, per direction; the two directions do
//     not share a lock.
//
//   - Frames leave a direction in the order they entered it. With Rate or
//     Delay each frame gets the time it becomes readable when it is written;
//     those times never decrease, so Read only looks at the oldest frame.
//
//   - A full ring tail-drops: Write accepts a prefix and counts the rest in
//     the writer's TxDrops. Frames that are queued but not yet due (Rate,
//     Delay) occupy slots like any other.
//
//   - Loss (Options.Loss) drops frames on the wire, after Write accepted
//     them: the writer counts them sent (TxPackets), the reading end counts
//     them in its RxDrops, and they never take a slot. Each direction draws
//     from its own generator, seeded from Loss.Seed and the direction, once
//     per frame in write order, so the same seed and the same frames
//     written drop the same frames: frame i of a direction is lost or not
//     whatever the timing. A super packet is one frame: lost whole.
//
//   - Close on either end closes the wire: both ends return netif.ErrClosed
//     from then on, and queued frames are discarded.
//
//   - Super packets (Options.MaxSuperPacketLen) cross whole: each end is a
//     [netif.SuperPacketLink]. WriteGSO stores a super packet as written,
//     with its segment size, in one slot; Read hands it over whole to a
//     buffer that holds it, else cut into MTU segments (netif/gso), and
//     always cuts a UDP super packet into its datagrams (the contract in
//     netif/superpacket.go). The wire computes no checksum on the way: a
//     frame or super packet delivered whole carries the L4 checksum its
//     writer put in it, which may be incomplete (the wire is a
//     netif.TrustedWire unless Options.FullChecksums: nexuses leave the
//     checksums their apps left to it); a segment cut on Read gets a
//     checksum computed from its bytes.
//
// Memory is 2 × QueueLen × slot bytes per pair, a slot being
// max(MaxFrameLen, MaxSuperPacketLen): about 3 MB with the defaults, 128 MiB
// at MTU 65535 (or with 64 KiB super packets) with the default QueueLen,
// so pairs that carry super packets usually want a shorter queue.
package memif

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/gso"
	"github.com/skylane/skylane/packet"
)

// Defaults and limits of Options.
const (
	DefaultName     = "memif"
	DefaultMTU      = 1500 // Ethernet
	DefaultQueueLen = 1024 // 1024 frames of 1518 bytes: 1.5 MB per direction
	// MinMTU is the smallest MTU an IPv4 host must accept (RFC 791).
	MinMTU = 68
	// MaxMTU is the largest IP packet whose length fits the 16-bit length
	// field, so GSO/GRO super packets can cross the wire whole.
	MaxMTU = 65535
	// MaxQueueBytes caps QueueLen × MaxFrameLen for one direction, so a typo
	// in QueueLen cannot allocate the machine's memory: 1 GiB is 16384
	// super packets of 64 KiB.
	MaxQueueBytes = 1 << 30
	// batchSize is what BatchSize reports (or QueueLen, if smaller): at 32
	// frames the lock is one of 32 frames' costs and BenchmarkPair shows
	// little left to gain from larger batches; it is also the batch
	// wireguard-go's TUN reads and writes with GRO/GSO (conn.IdealBatchSize
	// is 128, but 32 keeps a batch of 1500-byte frames within L2).
	batchSize = 32
)

// Options configure a pair. The zero value is a 1500-byte Ethernet wire with
// 1024 frames of queue per direction, no rate limit, no delay and no loss.
type Options struct {
	// Name names the wire; the ends are Name+"0" and Name+"1". Default
	// DefaultName.
	Name string
	// MTU is the L3 MTU, MinMTU..MaxMTU. Default DefaultMTU.
	MTU int
	// LinkType is the framing both ends carry. Default packet.Ethernet.
	LinkType packet.LinkType
	// QueueLen is how many frames each direction buffers, written but not
	// yet read. Default DefaultQueueLen.
	QueueLen int
	// Rate limits each direction to this many bits per second of frame
	// bytes, as a token bucket: frames wait in the queue until the bucket
	// lets them out. 0 is unlimited.
	Rate int64
	// Burst is the bucket's depth in bytes: how far ahead of the rate frames
	// may leave after the wire has been idle. Used only with Rate. Default
	// (0) is one MaxFrameLen.
	Burst int
	// Delay is how long after Write a frame becomes readable. 0 is none.
	Delay time.Duration
	// MaxSuperPacketLen is the longest super packet (link header included)
	// the wire carries whole (netif.SuperPacketLink): from
	// MaxFrameLen(MTU, LinkType) up to netif.HeaderLen(LinkType) + 65535.
	// 0 means MaxFrameLen: no super packets, every frame at most the MTU.
	MaxSuperPacketLen int
	// Loss drops frames on the wire, so apps can be tested under loss. The
	// zero value loses nothing.
	Loss Loss
	// FullChecksums makes the wire behave as a device as far as checksums
	// go: its ends are not a netif.TrustedWire, so the nexus completes
	// every checksum a sender left to the wire before it writes, and its
	// apps verify what it reads. The default wire is trusted.
	FullChecksums bool
}

// Loss is a wire's loss model, the same in both directions: independent
// random drops and bursts of consecutive drops, drawn per frame from a
// seeded generator (deterministic per seed; see the package doc). Bursts
// count frames, not time, as per-packet loss models do: on a quiet wire a
// burst swallows the next BurstLen frames however far apart they are (a
// stalled connection's retransmissions, backing off), so keep some other
// traffic on the wire unless that is what is tested.
type Loss struct {
	// Rate is the probability, 0..1, that a frame is dropped on its own.
	Rate float64
	// BurstRate is the probability, 0..1, that a frame starts a burst:
	// it and the BurstLen-1 frames after it are dropped.
	BurstRate float64
	// BurstLen is how many consecutive frames a burst drops; required
	// (at least 1) with BurstRate.
	BurstLen int
	// Seed seeds the generators.
	Seed uint64
}

func (l Loss) check() error {
	switch {
	case !(l.Rate >= 0 && l.Rate <= 1): // also refuses NaN
		return fmt.Errorf("memif: loss rate %v outside 0..1", l.Rate)
	case !(l.BurstRate >= 0 && l.BurstRate <= 1):
		return fmt.Errorf("memif: burst rate %v outside 0..1", l.BurstRate)
	case l.BurstLen < 0 || (l.BurstRate > 0 && l.BurstLen == 0):
		return fmt.Errorf("memif: burst length %d: give at least 1 frame with a burst rate", l.BurstLen)
	}
	return nil
}

// NewPair returns the two ends of a new wire. Every option is checked before
// anything is allocated.
func NewPair(opts Options) (a, b netif.Link, err error) {
	if opts.Name == "" {
		opts.Name = DefaultName
	}
	if opts.MTU == 0 {
		opts.MTU = DefaultMTU
	}
	if opts.LinkType == 0 {
		opts.LinkType = packet.Ethernet
	}
	if opts.QueueLen == 0 {
		opts.QueueLen = DefaultQueueLen
	}
	switch {
	case opts.MTU < MinMTU || opts.MTU > MaxMTU:
		return nil, nil, fmt.Errorf("memif: MTU %d outside %d..%d", opts.MTU, MinMTU, MaxMTU)
	case opts.LinkType != packet.Ethernet && opts.LinkType != packet.RawIP:
		return nil, nil, fmt.Errorf("memif: unknown link type %d", opts.LinkType)
	case opts.QueueLen < 0:
		return nil, nil, fmt.Errorf("memif: negative QueueLen %d", opts.QueueLen)
	case opts.Rate < 0:
		return nil, nil, fmt.Errorf("memif: negative Rate %d", opts.Rate)
	case opts.Burst < 0:
		return nil, nil, fmt.Errorf("memif: negative Burst %d", opts.Burst)
	case opts.Delay < 0:
		return nil, nil, fmt.Errorf("memif: negative Delay %v", opts.Delay)
	}
	if err := opts.Loss.check(); err != nil {
		return nil, nil, err
	}
	frameLen := netif.MaxFrameLen(opts.MTU, opts.LinkType)
	slot := max(frameLen, opts.MaxSuperPacketLen)
	if opts.MaxSuperPacketLen != 0 && (opts.MaxSuperPacketLen < frameLen || opts.MaxSuperPacketLen > netif.HeaderLen(opts.LinkType)+0xffff) {
		return nil, nil, fmt.Errorf("memif: MaxSuperPacketLen %d outside %d..%d", opts.MaxSuperPacketLen, frameLen, netif.HeaderLen(opts.LinkType)+0xffff)
	}
	if opts.QueueLen > MaxQueueBytes/slot {
		return nil, nil, fmt.Errorf("memif: QueueLen %d of %d-byte frames exceeds %d bytes",
			opts.QueueLen, slot, MaxQueueBytes)
	}
	if opts.Burst == 0 {
		opts.Burst = frameLen
	}

	w := &wire{
		epoch: time.Now(),
		done:  make(chan struct{}),
		mtu:   opts.MTU,
		lt:    opts.LinkType,
		frame: frameLen,
		super: slot,
		batch: min(batchSize, opts.QueueLen),
		full:  opts.FullChecksums,
	}
	for i := range w.q {
		w.q[i].init(&opts, slot, uint64(i))
	}
	e0 := w.newEnd(opts.Name+"0", &w.q[0], &w.q[1])
	e1 := w.newEnd(opts.Name+"1", &w.q[1], &w.q[0])
	return e0, e1, nil
}

// wire is what the two ends share.
type wire struct {
	// Immutable after NewPair.
	epoch time.Time // monotonic origin of the due times
	mtu   int
	lt    packet.LinkType
	frame int // MaxFrameLen(mtu, lt)
	super int // MaxSuperPacketLen: the slot size, at least frame
	batch int
	full  bool          // Options.FullChecksums
	done  chan struct{} // closed by Close; unblocks Wait

	closeOnce sync.Once
	q         [2]queue // q[0] carries end 0 → end 1, q[1] the reverse
}

// now is the monotonic time in nanoseconds since the wire was made.
func (w *wire) now() int64 { return int64(time.Since(w.epoch)) }

// queue is one direction of the wire: a ring of fixed slots. The writing
// end's Write fills it at head+count, the reading end's Read empties it at
// head.
type queue struct {
	// Immutable after init.
	slot    int           // bytes per slot: MaxFrameLen
	buf     []byte        // len(lens) slots of slot bytes each
	paced   bool          // Rate or Delay is set: frames carry due times
	nsPerB  float64       // with Rate: nanoseconds one byte takes (8e9/Rate)
	burstNs int64         // with Rate: Burst bytes in nanoseconds
	delay   int64         // Delay in nanoseconds
	ready   chan struct{} // 1-buffered; Write signals the reader's Wait

	mu     sync.Mutex
	closed bool    // guarded by mu; set once by Close
	head   int     // guarded by mu; slot of the oldest frame
	count  int     // guarded by mu; frames queued, due or not
	lens   []int32 // guarded by mu; frame length per slot
	segs   []int32 // guarded by mu; per slot, a super packet's segment size
	udp    []bool  // guarded by mu; per slot, the super packet is UDP (always cut on Read)
	// split is the head super packet while Read cuts it into segments
	// across buffers and calls; next is the segment to write next.
	// Guarded by mu.
	split     gso.Super
	splitting bool
	next      int
	due       []int64 // guarded by mu; per slot, wire.now() at which it is readable; nil unless paced
	tat       int64   // guarded by mu; token bucket's theoretical arrival time (GCRA), with Rate
	loss      *lossy  // guarded by mu; nil without Options.Loss

	// Counters, guarded by mu. The writing end's Tx, the reading end's Rx.
	txPackets, txBytes, txDrops uint64
	rxPackets, rxBytes, rxDrops uint64
}

func (q *queue) init(o *Options, slot int, dir uint64) {
	q.slot = slot
	q.buf = make([]byte, o.QueueLen*slot)
	q.lens = make([]int32, o.QueueLen)
	q.segs = make([]int32, o.QueueLen)
	q.udp = make([]bool, o.QueueLen)
	q.ready = make(chan struct{}, 1)
	q.delay = int64(o.Delay)
	if o.Rate > 0 {
		q.nsPerB = 8e9 / float64(o.Rate)
		q.burstNs = int64(float64(o.Burst) * q.nsPerB)
	}
	if o.Rate > 0 || o.Delay > 0 {
		q.paced = true
		q.due = make([]int64, o.QueueLen)
	}
	if o.Loss.Rate > 0 || o.Loss.BurstRate > 0 {
		q.loss = &lossy{Loss: o.Loss, rng: rand.New(rand.NewPCG(o.Loss.Seed, dir))}
	}
}

// lossy is one direction's loss generator.
type lossy struct {
	Loss
	rng  *rand.Rand
	left int // frames the current burst still drops
}

// drop reports whether the next frame is lost. Both draws are made for
// every frame, in a burst or not, so frame i's fate depends only on the
// seed and i.
func (l *lossy) drop() bool {
	single := l.rng.Float64() < l.Rate
	burst := l.rng.Float64() < l.BurstRate
	if l.left > 0 {
		l.left--
		return true
	}
	if burst {
		l.left = l.BurstLen - 1
		return true
	}
	return single
}

// dueTime returns when a frame of size bytes written at now becomes readable,
// and charges the token bucket for it. The bucket is kept as a GCRA
// theoretical arrival time, tat: a frame may leave once tat - burst has been
// reached, and each frame pushes tat on by its transmission time. Called
// with mu held, in write order, so due times never decrease.
func (q *queue) dueTime(now int64, size int) int64 {
	t := now
	if q.nsPerB > 0 {
		t = max(now, q.tat-q.burstNs)
		q.tat = max(q.tat, now) + int64(float64(size)*q.nsPerB)
	}
	return t + q.delay
}

// end is one end of the wire.
type end struct {
	// Immutable after NewPair.
	name string
	w    *wire
	tx   *queue // this end writes into tx
	rx   *queue // and reads from rx

	timer *time.Timer // used by Wait only: owned by the reader goroutine
}

var _ netif.SuperPacketLink = (*end)(nil)
var _ netif.Notifier = (*end)(nil)
var _ netif.TrustedWire = (*end)(nil)

func (w *wire) newEnd(name string, tx, rx *queue) *end {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &end{name: name, w: w, tx: tx, rx: rx, timer: t}
}

// Name implements netif.Link.Name.
func (e *end) Name() string { return e.name }

// TrustedWire implements netif.TrustedWire: true unless
// Options.FullChecksums.
func (e *end) TrustedWire() bool { return !e.w.full }

// MTU implements netif.Link.MTU.
func (e *end) MTU() int { return e.w.mtu }

// LinkType implements netif.Link.LinkType.
func (e *end) LinkType() packet.LinkType { return e.w.lt }

// BatchSize implements netif.Link.BatchSize.
func (e *end) BatchSize() int { return e.w.batch }

// MaxSuperPacketLen implements netif.SuperPacketLink.MaxSuperPacketLen:
// Options.MaxSuperPacketLen, or MaxFrameLen without super packets.
func (e *end) MaxSuperPacketLen() int { return e.w.super }

// Read implements netif.Link.Read. It returns the frames that are due, in
// order, up to min(len(bufs), len(sizes)). A super packet goes whole into
// a buffer that holds it; otherwise, and always for UDP, it is cut into
// segments of at most MaxFrameLen, across buffers and calls.
func (e *end) Read(bufs [][]byte, sizes []int) (int, error) {
	limit := min(len(bufs), len(sizes))
	q := e.rx
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return 0, netif.ErrClosed
	}
	var now int64
	if q.paced && q.count > 0 {
		now = e.w.now() // once per batch
	}
	n := 0
	var err error
	for n < limit && q.count > 0 {
		h := q.head
		if q.paced && q.due[h] > now {
			break
		}
		size := int(q.lens[h])
		f := q.buf[h*q.slot : h*q.slot+size]
		if size > e.w.frame && (q.splitting || q.udp[h] || size > len(bufs[n])) {
			k, ok := q.segment(e.w, h, f, bufs[n])
			if !ok {
				err = io.ErrShortBuffer
				break
			}
			sizes[n] = k
			q.rxBytes += uint64(k)
			n++
			continue
		}
		q.pop()
		if size > len(bufs[n]) {
			q.rxDrops++
			err = io.ErrShortBuffer
			break
		}
		copy(bufs[n], f)
		sizes[n] = size
		q.rxBytes += uint64(size)
		n++
	}
	q.rxPackets += uint64(n)
	q.mu.Unlock()
	return n, err
}

// pop removes the head frame. Called with mu held.
func (q *queue) pop() {
	q.head++
	if q.head == len(q.lens) {
		q.head = 0
	}
	q.count--
}

// segment writes the next segment of the head super packet f (slot h) into
// buf and returns its length; the super packet leaves the queue with its
// last segment. ok is false when buf is too short for a segment (shorter
// than MaxFrameLen, against the Link contract): the rest of the super
// packet is dropped and counted. Called with mu held.
func (q *queue) segment(w *wire, h int, f, buf []byte) (int, bool) {
	if !q.splitting {
		// WriteGSO checked the packet: Init fails only on a bug.
		if q.split.Init(f, l3Off(f, w.lt), int(q.segs[h])) != nil {
			q.pop()
			q.rxDrops++
			return 0, false
		}
		q.splitting, q.next = true, 0
	}
	k, err := q.split.Segment(q.next, buf)
	q.next++
	if err != nil || q.next == q.split.Segments() {
		q.splitting = false
		q.split = gso.Super{} // keep no reference to the slot
		q.pop()
	}
	if err != nil {
		q.rxDrops++
		return 0, false
	}
	return k, true
}

// l3Off is where the IP header of frame f starts: after the Ethernet
// header (and one 802.1Q tag), or at 0 on a raw IP link.
func l3Off(f []byte, lt packet.LinkType) int {
	if lt != packet.Ethernet {
		return 0
	}
	if len(f) >= 14 && f[12] == 0x81 && f[13] == 0x00 {
		return 18
	}
	return 14
}

// Write implements netif.Link.Write: WriteGSO(frames, nil). Frames up to
// MaxFrameLen bytes are accepted, including empty ones; a longer one must
// be a TCP super packet (see WriteGSO).
func (e *end) Write(frames [][]byte) (int, error) { return e.WriteGSO(frames, nil) }

// WriteGSO implements netif.SuperPacketLink.WriteGSO. A frame up to
// MaxFrameLen is carried as it is, whatever it holds. A longer one, up to
// MaxSuperPacketLen, must be a TCP or UDP super packet (see the package
// doc) whose segSizes[i] (0 or absent: the MSS at the MTU, TCP only) makes
// segments within the MTU; it is carried whole, with its segment size.
// Any other frame stops the batch with netif.ErrFrameTooLarge.
func (e *end) WriteGSO(frames [][]byte, segSizes []int) (int, error) {
	q := e.tx
	k := len(frames) // frames[:k] may go
	var bad error
	for i, f := range frames {
		if len(f) <= e.w.frame {
			continue
		}
		if _, _, bad = e.w.checkSuper(f, segSize(segSizes, i)); bad != nil {
			k = i
			break
		}
	}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return 0, netif.ErrClosed
	}
	var now int64
	if q.paced {
		now = e.w.now() // once per batch
	}
	// Tail drop first, at the queue's room; then loss on the wire, among
	// the frames that went out.
	n := min(k, len(q.lens)-q.count)
	pos := q.head + q.count
	if pos >= len(q.lens) {
		pos -= len(q.lens)
	}
	lost := 0
	for i, f := range frames[:n] {
		if q.loss != nil && q.loss.drop() {
			// Sent, then lost on the wire: it used the wire's time.
			if q.paced {
				q.dueTime(now, len(f))
			}
			q.txBytes += uint64(len(f))
			lost++
			continue
		}
		copy(q.buf[pos*q.slot:], f)
		q.lens[pos] = int32(len(f))
		if len(f) > e.w.frame { // segs and udp are read for such frames only
			seg, udp, _ := e.w.checkSuper(f, segSize(segSizes, i))
			q.segs[pos], q.udp[pos] = int32(seg), udp
		}
		if q.paced {
			q.due[pos] = q.dueTime(now, len(f))
		}
		q.txBytes += uint64(len(f))
		pos++
		if pos == len(q.lens) {
			pos = 0
		}
	}
	q.count += n - lost
	q.txPackets += uint64(n)
	q.rxDrops += uint64(lost)
	q.txDrops += uint64(k - n)
	q.mu.Unlock()

	if n > lost {
		select {
		case q.ready <- struct{}{}:
		default: // a wake-up is already pending
		}
	}
	if k < len(frames) {
		return n, fmt.Errorf("%s: write frame %d of %d bytes (max %d, super packets up to %d): %w: %w",
			e.name, k, len(frames[k]), e.w.frame, e.w.super, netif.ErrFrameTooLarge, bad)
	}
	return n, nil
}

func segSize(segSizes []int, i int) int {
	if i < len(segSizes) {
		return segSizes[i]
	}
	return 0
}

// Why a frame longer than MaxFrameLen was refused (wrapped with
// netif.ErrFrameTooLarge).
var (
	errSuperLen  = errors.New("longer than MaxSuperPacketLen")
	errSuperUDP  = errors.New("UDP super packet without a segment size")
	errSuperSize = errors.New("segments would exceed the MTU")
)

// checkSuper checks that f, longer than MaxFrameLen, can cross as a super
// packet cut into seg-byte payloads (0: the MSS at the MTU, TCP only), and
// returns the segment size and whether it is UDP.
func (w *wire) checkSuper(f []byte, seg int) (int, bool, error) {
	if len(f) > w.super {
		return 0, false, errSuperLen
	}
	l3 := l3Off(f, w.lt)
	given := seg
	if seg == 0 {
		seg = gso.MSS(f, l3, w.mtu)
	}
	var g gso.Super
	if err := g.Init(f, l3, seg); err != nil {
		return 0, false, err
	}
	udp := g.Proto() == gso.ProtoUDP
	switch {
	case udp && given == 0:
		return 0, false, errSuperUDP
	case g.HeaderLen()+seg > w.mtu:
		return 0, false, errSuperSize
	}
	return seg, udp, nil
}

// Wait implements netif.Link.Wait. With Rate or Delay it also wakes when the
// oldest queued frame becomes due.
func (e *end) Wait(timeout time.Duration) error {
	q := e.rx
	// Drop a stale wake-up before looking: a Write after this point signals
	// again, so none is lost.
	select {
	case <-q.ready:
	default:
	}
	wait := time.Duration(-1) // until the next frame is due; -1: none queued
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return netif.ErrClosed
	}
	if q.count > 0 {
		if !q.paced {
			q.mu.Unlock()
			return nil
		}
		wait = time.Duration(q.due[q.head] - e.w.now())
		if wait <= 0 {
			q.mu.Unlock()
			return nil
		}
	}
	q.mu.Unlock()

	if timeout == 0 {
		return nil
	}
	if timeout > 0 && (wait < 0 || timeout < wait) {
		wait = timeout
	}
	var fire <-chan time.Time
	if wait >= 0 {
		e.timer.Reset(wait)
		defer e.timer.Stop() // since Go 1.23, Stop leaves no stale tick behind
		fire = e.timer.C
	}
	select {
	case <-q.ready:
	case <-fire:
	case <-e.w.done:
		return netif.ErrClosed
	}
	return nil
}

// Ready implements netif.Notifier.Ready: Write signals frames; a paced
// wire's frames become readable at their due times, which it does not
// signal, so it has none (use Wait).
func (e *end) Ready() (frames <-chan struct{}, closed <-chan struct{}) {
	if e.rx.paced {
		return nil, e.w.done
	}
	return e.rx.ready, e.w.done
}

// Stats implements netif.Link.Stats.
func (e *end) Stats() netif.Stats {
	var s netif.Stats
	e.tx.mu.Lock()
	s.TxPackets, s.TxBytes, s.TxDrops = e.tx.txPackets, e.tx.txBytes, e.tx.txDrops
	e.tx.mu.Unlock()
	e.rx.mu.Lock()
	s.RxPackets, s.RxBytes, s.RxDrops = e.rx.rxPackets, e.rx.rxBytes, e.rx.rxDrops
	e.rx.mu.Unlock()
	return s
}

// Close implements netif.Link.Close. It closes the whole wire: both ends.
func (e *end) Close() error {
	e.w.closeOnce.Do(func() {
		for i := range e.w.q {
			q := &e.w.q[i]
			q.mu.Lock()
			q.closed = true
			q.count = 0
			q.mu.Unlock()
		}
		close(e.w.done)
	})
	return nil
}
