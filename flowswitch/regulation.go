package flowswitch

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/regulate"
)

// Regulation in bursty conditions (docs/design.md §7, US20190306281A1), opt-in with
// Options.Regulation. The pieces are package regulate's; this file wires
// them into the switch:
//
//   - Transmit queue: the packets that pass the transmit checks (and get
//     their L2 header) are filed in a regulate.Queue (fq_codel: DRR, CoDel
//     per flow, head drop from the fattest flow on overflow) under their
//     flow's token. A flow of a port added with AddPortOptions.Advisories
//     carries its advisory entry (port, flow.Entry.AdvisoryIndex): the
//     queue suspends it rather than dropping its packets. Any other flow
//     is dropped early while the same policy would hold it back. The host
//     port's frames (the kernel's) are queued too, with no token (the
//     queue hashes their 5-tuple) and no advisory.
//   - Pacing: with Options.LinkRate the queue is drained no faster than
//     the link's rate (a token bucket of RegulationOptions.LinkBurst bytes
//     that may run one batch into debt), so the backlog builds here, where
//     CoDel and DRR act on it, not in the device's FIFO. Without it, the
//     queue is drained into the device until the device refuses.
//   - Advisories: after each round of enqueueing and dequeueing, the
//     queue's transitions are written into the owning channel's advisory
//     table (channel.SetAdvisory, which posts EventAdvisory): the app's
//     stack stops sending on a SUSPENDED flow and starts again when the
//     entry clears. A flow torn down is forgotten by the queue (its queued
//     packets discarded, counted) and its entry cleared.
//   - Fairness: TxSync serves the ports' TX rings round robin
//     (regulate.RoundRobin), each port taking at most TxBudget packets per
//     round, so a bursting app is one port among the others; a port added
//     with AddPortOptions.Rate is also capped by its own token bucket.
//   - Back-pressure: a port whose app honours advisories is not served
//     while the queue holds its high-water mark (AdvisoryPolicy.HighWater,
//     3/4 of the limit by default), and no further than it: its packets
//     wait in its TX ring, which the app stops filling once suspended. So
//     the packets such an app has in flight when it is suspended (up to a
//     TX ring each) never overflow the queue, and the headroom above the
//     mark is left to traffic the policy can only drop (early, at fair
//     share), which then cannot make the queue overflow into an advisory
//     flow either.
//   - Receive limits per channel (rxlimit.go): what a port's RX ring has
//     no room for, what exceeds RxBudget per input batch, or what its
//     AddPortOptions.RxRate bucket refuses is dropped before the copy.
//   - Receive: adaptive batching (regulate.Mitigation): under a high
//     packet rate the switch holds what it read, up to the mitigation
//     level's hold, to deliver fuller batches (fewer notifications); at
//     low rates it delivers at once.
//   - Stalls: a port whose app leaves its RX ring undrained while packets
//     wait for it (see stallCheck) for StallTimeout is defunct
//     (channel.ReasonStalled, which returns its memory) and removed.
//
// Invariants, each checked by the tests:
//   - A flow with an advisory loses no packet to CoDel or early drop; only
//     an overflowing queue drops from it (and it is suspended then).
//   - One port's burst does not change another's loss, and adds at most
//     about the AQM target to its latency.
//   - No allocation per packet in steady state.

// Defaults of RegulationOptions.
const (
	// DefaultLinkBurstTime sizes the pacer's burst: what the link sends in
	// 2 ms, and at least DefaultLinkBurstFrames frames. A wake-up that
	// late (timer slack, a busy core) then loses no link time; measured on
	// 2 shared cores, 8 bulk flows at 20 Mbit/s kept the link 88% busy
	// with 1 ms or 2 frames, 97% with 4 frames. The price is latency: the
	// device's FIFO holds up to this much after a late wake-up.
	DefaultLinkBurstTime   = 2 * time.Millisecond
	DefaultLinkBurstFrames = 4
	// DefaultPortBurst is the burst of a port's token bucket when
	// AddPortOptions.Burst is 0: 64 KiB, one TCP window's worth of a
	// small stream.
	DefaultPortBurst = 64 << 10
	// stallCheckMax is the longest period of the stall check (the nexus's
	// reaper tick, docs/design.md §7).
	stallCheckMax = time.Second
	// fullBackoff is how long the pacer waits before retrying a device that
	// refused frames (full): the device needs a frame time or so.
	fullBackoff = 50 * time.Microsecond
	// transitionBatch is how many advisory transitions are published per
	// Transitions call.
	transitionBatch = 64
)

// RegulationOptions configure the switch's regulation (docs/design.md §7). The
// zero value is the defaults of docs/design.md §7: fq_codel with a 2048-packet limit,
// 1514-byte quantum, 10 ms target, 100 ms interval; TX budgets of TxBatch
// per port per round; adaptive receive batching; a 10 s stall timeout.
type RegulationOptions struct {
	// Queue configures the AQM (regulate.Options; zero fields take its
	// defaults). MTU, LinkType and Batch are the switch's and must be left
	// zero; HashSeed 0 means a random seed.
	Queue regulate.Options
	// LinkBurst is the pacer's depth in bytes (with Options.LinkRate): 0
	// means DefaultLinkBurstTime at LinkRate, at least
	// DefaultLinkBurstFrames frames.
	LinkBurst int
	// TxBudget is the most packets one port's TX ring gives per round of
	// TxSync: 0 means TxBatch.
	TxBudget int
	// TxRoundLimit caps the packets of one round over all ports, split
	// evenly among the ports (regulate.RoundRobin): 0 means no cap beyond
	// the budgets.
	TxRoundLimit int
	// NoMitigation turns adaptive receive batching off: every input batch
	// is delivered at once.
	NoMitigation bool
	// Mitigation tunes adaptive receive batching (zero fields: regulate's
	// defaults: 10 ms samples, holds of 0 to 1000 µs).
	Mitigation regulate.MitigationOptions
	// RxBudget is the most output packets (ring slots; a merged super
	// packet is one) one port receives per input batch; what its flows
	// bring beyond it is dropped before the copy (rxlimit.go). 0 means no
	// budget beyond the port's RX ring room. Receive cannot defer as
	// transmit does, so a budget drops: set it to keep one flooded app
	// from taking a whole batch's copy work, not as a default.
	RxBudget int
	// StallTimeout is how long a port's RX ring may stay undrained while
	// packets wait before its channel is defunct: 0 means
	// regulate.DefaultStallTimeout (10 s), negative disables the check.
	StallTimeout time.Duration
}

// AddPortOptions configure a port (AddPortWith).
type AddPortOptions struct {
	// Advisories says the port's app honours flow advisories: it reads
	// its channel's advisory table (or EventAdvisory) and stops sending
	// on a SUSPENDED flow until the entry clears. Its flows are then
	// suspended by the AQM instead of dropped (docs/design.md §7). Set it only for
	// an app that listens: a suspended flow whose sender goes on is held
	// only by the queue limit. Without Regulation it has no effect.
	Advisories bool
	// Rate caps the port's transmit rate in bits per second of IP bytes
	// (a token bucket, regulate.TokenBucket); 0 is no cap. Burst is the
	// bucket's depth in bytes: 0 means DefaultPortBurst. Needs Regulation.
	Rate  int64
	Burst int
	// RxRate caps the port's receive rate in bits per second of IP bytes
	// delivered (a token bucket): what comes faster is dropped before the
	// copy (rxlimit.go). 0 is no cap. RxBurst is the bucket's depth in
	// bytes: 0 means DefaultPortBurst. Needs Regulation.
	RxRate  int64
	RxBurst int
}

// RegulationStats count the regulation layer (zero without Regulation).
type RegulationStats struct {
	// Queue is the AQM's own counters and occupancy: Enqueued, Dequeued,
	// CoDelDrops, OverflowDrops, EarlyDrops, ECNMarks, Forgotten...
	Queue regulate.Stats
	// Suspends and Resumes count the advisory changes published to the
	// apps (channel.SetAdvisory): one event each.
	Suspends, Resumes uint64
	// AdvisoryErrors counts the changes that could not be published: the
	// channel's advisory table is smaller than the flow's index, or it is
	// defunct.
	AdvisoryErrors uint64
	// LinkPackets and LinkBytes are the frames the queue gave the device,
	// LinkDrops those the device refused (full).
	LinkPackets, LinkBytes, LinkDrops uint64
	// Paced counts the times the pacer stopped the queue for want of
	// credit: the link was the bottleneck.
	Paced uint64
	// HostQueued and HostDrops are the host port's frames the queue took
	// and refused.
	HostQueued, HostDrops uint64
	// Rounds counts TxSync rounds over the ports; RateLimited the ports
	// skipped in a round because their token bucket was empty;
	// Backpressured the advisory ports skipped, or served less than their
	// budget, because the queue was at its high-water mark.
	Rounds, RateLimited, Backpressured uint64
	// Held counts the input batches adaptive batching held back at least
	// once; MitigationLevel is its level now (0: delivering at once).
	Held            uint64
	MitigationLevel int
	// Stalled counts the ports defunct for a stalled RX ring.
	Stalled uint64
}

// PortRegStats are one port's regulation counters (Snapshot).
type PortRegStats struct {
	Advisories bool   `json:"advisories"`
	Rate       int64  `json:"rate_bps,omitempty"`
	Granted    uint64 `json:"tx_granted"`     // packets its TX budgets allowed, over all rounds
	Taken      uint64 `json:"tx_taken"`       // packets taken from its TX ring under those budgets
	Rounds     uint64 `json:"tx_rounds"`      // rounds it was served in
	FullRounds uint64 `json:"tx_full_rounds"` // rounds it used its whole budget (it had more waiting)
	Limited    uint64 `json:"tx_rate_limited"`
	Backpress  uint64 `json:"tx_backpressured"` // rounds held back: the queue was at its high-water mark
	RxRate     int64  `json:"rx_rate_bps,omitempty"`
	RxBudget   uint64 `json:"rx_budget_drops"` // packets refused by the per-batch receive budget
	RxLimited  uint64 `json:"rx_rate_drops"`   // packets refused by the receive token bucket
	Suspends   uint64 `json:"advisory_suspends"`
	Resumes    uint64 `json:"advisory_resumes"`
}

// portReg is a port's regulation state.
type portReg struct {
	adv    bool
	rate   int64
	bucket *pacer // nil: no rate cap
	st     PortRegStats
	// segsPerSlot is how many queue entries one TX slot of the port
	// became lately (a super packet is cut into its segments as it
	// enters the AQM), at least 1: serve sizes advisory ports' chunks
	// by it. It starts at the most a buffer can become, so a first
	// chunk of super packets does not overshoot.
	segsPerSlot int

	stall        regulate.StallDetector
	lastConsumed uint64 // the channel's RxPackets + Reclaimed at the last check
	refusedBase  uint64 // its RxDrops + AllocFails when lastConsumed last moved
}

// regState is the switch's regulation state, allocated by newRegState.
type regState struct {
	q        *regulate.Queue
	maxFrame int  // immutable: the queue's frame size
	paced    bool // immutable: Options.LinkRate > 0
	link     pacer
	views    [][]byte // Dequeue output; len TxBatch
	trans    []regulate.Transition
	full     bool // the last flush stopped on a full device

	rr      *regulate.RoundRobin // ports that do not honour advisories
	rrAdv   *regulate.RoundRobin // ports that do: the room under the high-water mark
	budget  int                  // immutable
	roundLi int                  // immutable: TxRoundLimit
	// highWater is the advisory policy's high-water mark (packets):
	// advisory ports are not served past it (back-pressure). Immutable.
	highWater int
	ready     []bool // per port: served by rr this round
	readyAdv  []bool // per port: served by rrAdv this round
	grants    []regulate.Grant

	mit     *regulate.Mitigation // nil: NoMitigation
	rxHeld  int                  // frames read and held in s.bufs[:rxHeld]
	rxSince int64                // when the first of them was read
	heldNow bool                 // the current held batch has been counted in Held

	stallTimeout time.Duration // immutable; 0: disabled
	stallEvery   int64         // immutable: ns between stall checks
	nextStall    int64

	stats RegulationStats
}

func newRegState(opts Options, lt packet.LinkType, now func() int64) (*regState, error) {
	ro := *opts.Regulation
	qo := ro.Queue
	if qo.MTU != 0 || qo.LinkType != 0 || qo.Batch != 0 {
		return nil, fmt.Errorf("%w: Regulation.Queue MTU, LinkType and Batch are the switch's: leave them 0", ErrBadOptions)
	}
	qo.MTU, qo.LinkType, qo.Batch = opts.Link.MTU(), lt, TxBatch
	if qo.HashSeed == 0 {
		// The seed defeats crafted hash collisions in the queue's flow
		// index: a per-switch random value, not a secret key.
		qo.HashSeed = rand.Uint64()
	}
	q, err := regulate.New(qo)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadOptions, err)
	}
	r := &regState{
		q:        q,
		maxFrame: q.MaxFrame(),
		views:    make([][]byte, TxBatch),
		trans:    make([]regulate.Transition, transitionBatch),
		budget:   ro.TxBudget,
		roundLi:  ro.TxRoundLimit,
	}
	if r.budget == 0 {
		r.budget = TxBatch
	}
	if r.budget < 0 || ro.TxRoundLimit < 0 || ro.LinkBurst < 0 || opts.LinkRate < 0 {
		return nil, fmt.Errorf("%w: negative TxBudget %d, TxRoundLimit %d, LinkBurst %d or LinkRate %d",
			ErrBadOptions, ro.TxBudget, ro.TxRoundLimit, ro.LinkBurst, opts.LinkRate)
	}
	if r.rr, err = regulate.NewRoundRobin(r.budget); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadOptions, err)
	}
	r.rrAdv, _ = regulate.NewRoundRobin(r.budget)
	limit := qo.Limit
	if limit == 0 {
		limit = regulate.DefaultLimit
	}
	pol, err := qo.Advisory.Resolve(limit, r.maxFrame)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadOptions, err)
	}
	r.highWater = pol.HighWater
	if opts.LinkRate > 0 {
		burst := int64(ro.LinkBurst)
		if burst == 0 {
			// Divided first: no overflow, whatever the rate.
			perBurst := int64(time.Second / DefaultLinkBurstTime)
			burst = max(DefaultLinkBurstFrames*int64(r.maxFrame), opts.LinkRate/8/perBurst)
		}
		if r.link, err = newPacer(opts.LinkRate, burst, now()); err != nil {
			return nil, fmt.Errorf("%w: link pacer: %w", ErrBadOptions, err)
		}
		r.paced = true
	}
	if !ro.NoMitigation {
		if r.mit, err = regulate.NewMitigation(ro.Mitigation); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadOptions, err)
		}
	}
	if ro.StallTimeout >= 0 {
		r.stallTimeout = ro.StallTimeout
		if r.stallTimeout == 0 {
			r.stallTimeout = regulate.DefaultStallTimeout
		}
		// A stall is seen within the timeout plus two periods (the first
		// refusal may fall just after a check that saw the app drain): a
		// quarter of the timeout each, at most the reaper's 1 s tick.
		r.stallEvery = int64(min(stallCheckMax, r.stallTimeout/4))
	}
	return r, nil
}

// pacer is a regulate.TokenBucket that may run into debt: a batch of
// frames whose sizes are known only once dequeued is charged whole, and
// what the bucket could not cover is paid back before it lends again. The
// overshoot is at most one batch (one frame when credit is short, see
// regFlush).
type pacer struct {
	tb    regulate.TokenBucket
	burst int64
	debt  int64 // bytes
}

// newPacer returns a pacer of rate bits/s and burst bytes, full at now.
func newPacer(rate, burst, now int64) (pacer, error) {
	bps := rate / 8
	if bps < 1 {
		return pacer{}, fmt.Errorf("rate %d bit/s is below one byte per second", rate)
	}
	tb, err := regulate.NewTokenBucket(bps, burst, now)
	if err != nil {
		return pacer{}, err
	}
	return pacer{tb: tb, burst: burst}, nil
}

// credit pays what debt it can and returns the bytes available now;
// zero or less means wait.
func (p *pacer) credit(now int64) int64 {
	a := p.tb.Available(now)
	if p.debt > 0 {
		pay := min(a, p.debt)
		p.tb.Allow(int(pay), now)
		p.debt -= pay
		a -= pay
		if p.debt > 0 {
			return -p.debt
		}
	}
	return a
}

// charge takes n bytes, running into debt for what the bucket lacks.
func (p *pacer) charge(n int, now int64) {
	if p.tb.Allow(n, now) {
		return
	}
	a := p.tb.Available(now)
	p.tb.Allow(int(a), now)
	p.debt += int64(n) - a
}

// wait returns the ns until credit turns positive.
func (p *pacer) wait(now int64) int64 {
	need := min(p.debt+1, p.burst)
	w, ok := p.tb.Wait(int(need), now)
	if !ok {
		return int64(idleWait) // unreachable: need is within the burst
	}
	return w
}

// wake returns in how many ns the regulation's timed work is due.
// With nothing due it returns MaxInt64: the caller's idle wait bounds it.
func (r *regState) wake(now int64) int64 {
	w := int64(math.MaxInt64)
	if r.rxHeld > 0 {
		w = min(w, r.rxSince+r.mit.Hold(now)-now)
	}
	if r.q.Len() > 0 {
		switch {
		case r.full:
			w = min(w, int64(fullBackoff))
		case r.paced:
			w = min(w, r.link.wait(now))
		default:
			w = 0
		}
	}
	if r.stallEvery > 0 {
		w = min(w, r.nextStall-now)
	}
	return w
}

// AddPortWith is AddPort with options (AddPortOptions): whether the app
// honours flow advisories, and a rate cap. Errors: ErrBadOptions for a
// negative rate or burst, or a Rate without Regulation.
func (s *Switch) AddPortWith(ch *channel.Channel, o AddPortOptions) (flow.PortID, error) {
	if o.Rate < 0 || o.Burst < 0 || o.RxRate < 0 || o.RxBurst < 0 {
		return 0, fmt.Errorf("%w: port rate %d, burst %d, receive rate %d, burst %d", ErrBadOptions, o.Rate, o.Burst, o.RxRate, o.RxBurst)
	}
	if (o.Rate > 0 || o.RxRate > 0) && s.reg == nil {
		return 0, fmt.Errorf("%w: a port rate needs Options.Regulation", ErrBadOptions)
	}
	var rb *regulate.TokenBucket
	if o.RxRate > 0 {
		burst := int64(o.RxBurst)
		if burst == 0 {
			burst = DefaultPortBurst
		}
		tb, err := regulate.NewTokenBucket(o.RxRate/8, burst, s.now())
		if err != nil {
			return 0, fmt.Errorf("%w: port receive rate: %w", ErrBadOptions, err)
		}
		rb = &tb
	}
	var b *pacer
	if o.Rate > 0 {
		burst := int64(o.Burst)
		if burst == 0 {
			burst = DefaultPortBurst
		}
		p, err := newPacer(o.Rate, burst, s.now())
		if err != nil {
			return 0, fmt.Errorf("%w: port rate: %w", ErrBadOptions, err)
		}
		b = &p
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	id := s.addPort(ch)
	p := s.ports[id]
	p.reg.adv, p.reg.rate, p.reg.bucket = o.Advisories, o.Rate, b
	p.rx.rate, p.rx.bucket = o.RxRate, rb
	return id, nil
}

// writeDirect writes frames to the device outside the AQM (neighbour
// answers and solicitations, packets the resolver held), charging the
// pacer so the link's rate is kept overall.
func (s *Switch) writeDirect(frames [][]byte) (int, error) {
	w, err := s.link.Write(frames)
	if r := s.reg; r != nil && r.paced && w > 0 {
		bytes := 0
		for _, f := range frames[:w] {
			bytes += len(f)
		}
		r.link.charge(bytes, s.now())
	}
	return w, err
}

// enqueue files the output batch of port p (t.out, its runs) in the AQM,
// and counts what the queue accepted per flow, port and switch. now is the
// enqueue time.
func (s *Switch) enqueue(p *port, now int64) {
	t, q := &s.tx, s.reg.q
	var total, pkts uint64
	j := 0
	for _, r := range t.runs {
		e := r.e
		tag := regulate.Tag{Token: e.Token(), HasAdvisory: p.reg.adv && e.AdvisoryIndex() != flow.NoAdvisory,
			Advisory: regulate.AdvisoryRef{Port: uint32(p.id), Index: e.AdvisoryIndex()}}
		var n, bytes uint64
		var last packet.TCPFlags
		for x := j; x < j+r.n; x++ {
			ok := false
			if seg := t.outSeg[x]; seg != 0 {
				ok = s.enqueueSuper(t.out[x], seg, tag, now) // cut into wire frames (txgso.go)
			} else {
				ok = q.Enqueue(t.out[x], tag, now)
			}
			if ok {
				n++
				bytes += uint64(len(t.out[x]) - t.l2Len)
				last = t.flags[x]
			}
		}
		if n > 0 {
			e.AddOut(n, bytes, last)
		}
		pkts += n
		total += bytes
		j += r.n
	}
	p.tx.packets += pkts
	p.tx.bytes += total
	s.stats.TxPackets += pkts
	s.stats.TxBytes += total
	if p.reg.bucket != nil {
		p.reg.bucket.charge(int(total), now)
	}
}

// enqueueHost files frames from the host port in the AQM: no token (the
// queue hashes the 5-tuple), no advisory (the kernel is not told).
func (s *Switch) enqueueHost(frames [][]byte, now int64) int {
	r := s.reg
	w := 0
	for _, f := range frames {
		if r.q.Enqueue(f, regulate.Tag{}, now) {
			w++
		}
	}
	r.stats.HostQueued += uint64(w)
	r.stats.HostDrops += uint64(len(frames) - w)
	return w
}

// regFlush drains the AQM into the device, as fast as the pacer allows
// (or until the device refuses, unpaced), then publishes the advisory
// changes. It returns the frames written.
func (s *Switch) regFlush(now int64) (int, error) {
	r := s.reg
	r.full = false
	total := 0
	var err error
	for r.q.Len() > 0 {
		k := len(r.views)
		if r.paced {
			c := r.link.credit(now)
			if c <= 0 {
				r.stats.Paced++
				break
			}
			// As many frames as the credit surely covers, at least one:
			// the debt is then at most one frame.
			k = int(min(int64(k), max(c/int64(r.maxFrame), 1)))
		}
		n := r.q.Dequeue(r.views[:k], now)
		if n == 0 {
			break
		}
		bytes := 0
		for _, f := range r.views[:n] {
			bytes += len(f)
		}
		if r.paced {
			r.link.charge(bytes, now)
		}
		var w int
		w, err = s.link.Write(r.views[:n])
		r.stats.LinkPackets += uint64(w)
		r.stats.LinkDrops += uint64(n - w)
		if w == n {
			r.stats.LinkBytes += uint64(bytes)
		} else {
			for _, f := range r.views[:w] {
				r.stats.LinkBytes += uint64(len(f))
			}
		}
		total += w
		if err != nil {
			err = fmt.Errorf("flowswitch tx: %w", err)
			break
		}
		if w < n {
			r.full = true // the device is full: give it time
			break
		}
	}
	s.publishTransitions()
	return total, err
}

// publishTransitions writes the queue's advisory changes into the owning
// channels' tables; each change posts an EventAdvisory to the app.
func (s *Switch) publishTransitions() {
	r := s.reg
	for {
		n := r.q.Transitions(r.trans)
		for _, tr := range r.trans[:n] {
			p := s.portOf(flow.PortID(tr.Ref.Port))
			if p == nil {
				continue // the port is gone, and its table with it
			}
			state := channel.AdvisoryNone
			if tr.Suspended {
				state = channel.AdvisorySuspended
			}
			if p.ch.SetAdvisory(int(tr.Ref.Index), state) != nil {
				r.stats.AdvisoryErrors++
				continue
			}
			if tr.Suspended {
				r.stats.Suspends++
				p.reg.st.Suspends++
			} else {
				r.stats.Resumes++
				p.reg.st.Resumes++
			}
		}
		if n < len(r.trans) {
			return
		}
	}
}

// txRound is TxSync with Regulation: one round over the ports, round robin
// with per-port budgets (regulate.RoundRobin), then the queue is flushed.
// A port whose token bucket is empty sits the round out. The ports whose
// apps honour advisories share, evenly and in rotation (their own
// RoundRobin, whose total is the room), the room left under the queue's
// high-water mark (back-pressure, see the top of the file); the others
// are served first, each up to its budget: what they send beyond their
// share the AQM drops.
func (s *Switch) txRound() (int, error) {
	r := s.reg
	now := s.now()
	if len(r.ready) < len(s.ports) {
		// AddPort grew the port table (control plane): grow the scratch
		// once per new port, not per round.
		r.ready = make([]bool, len(s.ports))
		r.readyAdv = make([]bool, len(s.ports))
		r.grants = make([]regulate.Grant, len(s.ports))
	}
	// Flush first too: serving the ports can take a while (a full round
	// is hundreds of packets), and the link must not wait for it.
	if _, err := s.regFlush(now); err != nil {
		return 0, err
	}
	room := r.highWater - r.q.Len()
	for id, p := range s.ports {
		r.ready[id], r.readyAdv[id] = false, false
		switch {
		case p == nil:
		case p.reg.bucket != nil && p.reg.bucket.credit(now) <= 0:
			r.stats.RateLimited++
			p.reg.st.Limited++
		case p.reg.adv && room <= 0:
			r.stats.Backpressured++
			p.reg.st.Backpress++
		case p.reg.adv:
			r.readyAdv[id] = true
		default:
			r.ready[id] = true
		}
	}
	r.stats.Rounds++
	ports := len(s.ports)
	g := r.rr.Round(r.ready[:ports], r.roundLi, r.grants)
	total, err := s.serve(r.grants[:g], now)
	if err != nil {
		return total, err
	}
	if room = r.highWater - r.q.Len(); room > 0 {
		limit := room
		if r.roundLi > 0 {
			limit = min(limit, r.roundLi)
		}
		g = r.rrAdv.Round(r.readyAdv[:ports], limit, r.grants)
		n, err := s.serve(r.grants[:g], now)
		total += n
		if err != nil {
			return total, err
		}
	}
	_, err = s.regFlush(now)
	return total, err
}

// serve takes from each granted port's TX ring, in order, up to its grant
// (and its token bucket's credit), and files the packets in the AQM.
func (s *Switch) serve(grants []regulate.Grant, now int64) (int, error) {
	r := s.reg
	total := 0
	for _, gr := range grants {
		id := flow.PortID(gr.Channel)
		p := s.ports[id]
		if p.reg.bucket != nil {
			// No more packets than the credit surely covers (each is at
			// most an MTU), at least one: the overshoot is one packet.
			c := p.reg.bucket.credit(now) / int64(s.tx.mtu)
			gr.Budget = int(min(int64(gr.Budget), max(c, 1)))
		}
		if p.reg.adv && gr.Budget < r.budget {
			r.stats.Backpressured++ // its share of the room was less than its budget
			p.reg.st.Backpress++
		}
		taken := 0
		for taken < gr.Budget {
			p := s.portOf(id)
			if p == nil {
				break // removed: its channel turned defunct in this round
			}
			want := min(gr.Budget-taken, TxBatch)
			if p.reg.adv {
				// A super packet enters the AQM as its segments: size
				// the chunk by the segments per slot the port had last,
				// so the high-water mark is overshot by at most one
				// misjudged chunk, never by a ring of super packets.
				left := r.highWater - r.q.Len()
				if left <= 0 {
					break
				}
				want = min(want, max(1, left/p.reg.segsPerSlot))
			}
			before := r.q.Len()
			n, err := s.txTake(p, want, now)
			taken += n
			if p.reg.adv && n > 0 {
				p.reg.segsPerSlot = max(1, (r.q.Len()-before+n-1)/n)
			}
			// Tell the apps at once: a suspension seen now keeps the
			// next ports' (and rounds') packets out of the queue.
			s.publishTransitions()
			if err != nil {
				if errors.Is(err, channel.ErrDefunct) {
					break // fails only itself
				}
				return total + taken, err
			}
			if n < want {
				break // the ring is empty
			}
		}
		if p := s.portOf(id); p != nil {
			st := &p.reg.st
			st.Granted += uint64(gr.Budget)
			st.Taken += uint64(taken)
			st.Rounds++
			if taken >= gr.Budget {
				st.FullRounds++
			}
		}
		total += taken
	}
	return total, nil
}

// rxHold runs adaptive batching on a fresh read of got frames (now in
// s.bufs[rxHeld-got:rxHeld]) and reports whether the held frames are to be
// delivered now, and how many there are.
func (r *regState) rxHold(got int, now int64, batch int) (int, bool) {
	if got > 0 {
		if r.rxHeld == got {
			r.rxSince = now
			r.heldNow = false
		}
		r.mit.Count(got, now)
	} else {
		r.mit.Count(0, now) // advance the samples on a quiet link too
	}
	if r.rxHeld == 0 {
		return 0, false
	}
	if !r.mit.Release(r.rxHeld, batch, r.rxSince, now) {
		if !r.heldNow {
			r.heldNow = true
			r.stats.Held++
		}
		return 0, false
	}
	n := r.rxHeld
	r.rxHeld = 0
	return n, true
}

// rxHeldDue delivers the frames adaptive batching holds once their hold
// has passed (Service: no new frame came to trigger it).
func (s *Switch) rxHeldDue(now int64) (int, error) {
	r := s.reg
	if r == nil || r.rxHeld == 0 {
		return 0, nil
	}
	if !r.mit.Release(r.rxHeld, s.batch, r.rxSince, now) {
		return 0, nil
	}
	n := r.rxHeld
	r.rxHeld = 0
	return n, s.rxDeliver(n)
}

// stallCheck runs every stallEvery: a port whose app left its RX ring
// undrained while packets waited for it, for StallTimeout, is defunct
// (channel.ReasonStalled: the app is told, the channel's memory returned)
// and removed.
//
// The channel does not expose its RX ring's occupancy, so "packets wait"
// and "undrained" are read from its counters: packets wait when the
// channel refused some (RxDrops: ring full; AllocFails: the app holds
// every buffer) since the app last showed it drains, and the app drains
// when RxPackets (the ring had room) or Reclaimed (it freed buffers)
// moves. A slow app that drains at all is not stalled; an idle one with
// nothing arriving is not either. The stall is timed from the first check
// that sees a refusal with no drain since, so it is declared within the
// timeout plus two check periods of the first refusal. The one stall it
// cannot see is a ring that holds packets without ever filling (nothing
// is refused): that needs the ring's occupancy from the channel.
func (s *Switch) stallCheck(now int64) {
	r := s.reg
	if r.stallEvery == 0 || now < r.nextStall {
		return
	}
	r.nextStall = now + r.stallEvery
	for id, p := range s.ports {
		if p == nil {
			continue
		}
		c := p.ch.Counters()
		consumed := c.RxPackets + c.Reclaimed
		refused := c.RxDrops + c.AllocFails
		if consumed != p.reg.lastConsumed {
			p.reg.lastConsumed, p.reg.refusedBase = consumed, refused
		}
		waiting := int(min(refused-p.reg.refusedBase, 1<<30))
		if !p.reg.stall.Check(waiting, consumed, now) {
			continue
		}
		r.stats.Stalled++
		p.ch.Defunct(channel.ReasonStalled, fmt.Sprintf("rx ring undrained for %v while packets waited", r.stallTimeout))
		s.removePort(flow.PortID(id))
	}
}

// forget drops flow e's state in the AQM (its queued packets, counted as
// Forgotten) and clears its advisory entry, so the index starts clean for
// the next flow that gets it. Called on every teardown, before the token
// can name another flow.
func (s *Switch) forget(e *flow.Entry, p *port) {
	if s.reg == nil {
		return
	}
	s.reg.q.Forget(e.Token())
	if p != nil && p.reg.adv && e.AdvisoryIndex() != flow.NoAdvisory {
		// A suspended entry left set would pause the next flow given
		// this index; setting None when it already is posts nothing.
		p.ch.SetAdvisory(int(e.AdvisoryIndex()), channel.AdvisoryNone)
	}
}

// statsNow returns the regulation counters, with the queue's.
func (r *regState) statsNow() RegulationStats {
	st := r.stats
	st.Queue = r.q.Stats()
	if r.mit != nil {
		st.MitigationLevel = r.mit.Level()
	}
	return st
}
