package flowswitch

import (
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
