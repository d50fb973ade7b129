package regulate

import (
	"errors"
	"fmt"
	"time"

	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/packet"
)

// ErrInvalid is wrapped by every constructor error: an option out of range.
// Test with errors.Is.
var ErrInvalid = errors.New("regulate: invalid option")

// Defaults of the transmit queue (docs/design.md §7; RFC 8290 §5 for fq_codel's).
const (
	// DefaultLimit is the most packets the queue holds: 2048 (docs/design.md §7), a
	// fifth of fq_codel's 10240 because a user-space nexus copies each
	// packet into the queue's slab (2048 × 1518 B ≈ 3 MiB per netif).
	DefaultLimit = 2048
	// DefaultFlows is the number of flow slots: fq_codel's 1024 buckets.
	// Each slot holds one flow exactly (no hash sharing) while it has
	// packets; more concurrent flows than slots share one queue.
	DefaultFlows = 1024
	// DefaultQuantum is the DRR quantum in frame bytes: one full Ethernet
	// frame at MTU 1500 (1500 + 14), so a bulk flow sends one MTU frame
	// per round.
	DefaultQuantum = 1514
	// DefaultTarget is CoDel's target sojourn: 10 ms (docs/design.md §7; RFC 8290
	// says 5 ms; a user-space nexus's scheduling jitter is larger).
	DefaultTarget = 10 * time.Millisecond
	// DefaultInterval is CoDel's interval: a worst-case RTT, RFC 8289.
	DefaultInterval = 100 * time.Millisecond
	// DefaultDropBatch is the most packets one overflow drops from the
	// fattest flow: Linux fq_codel's 64, so a sustained overflow scans the
	// flows once per 64 packets, not once per packet.
	DefaultDropBatch = 64
	// DefaultBatch is the most frames one Dequeue returns, and so the
	// frames lent to the caller at any time: flowswitch.TxBatch.
	DefaultBatch = 64
	// DefaultMTU is the L3 MTU assumed when Options.MTU is 0.
	DefaultMTU = 1500
)

// Bounds of the options, so the slab and every counter stay far from
// overflow: 1<<20 packets of 64 KiB would already be 64 GiB.
const (
	maxLimit = 1 << 20
	maxFlows = 1 << 20
	maxMTU   = 65535
	minMTU   = 68 // the IPv4 minimum (RFC 791)
	maxBatch = 1 << 16
)

// Options configure a Queue. The zero value of a field means its default.
type Options struct {
	// MTU is the link's L3 MTU; the queue takes frames up to
	// netif.MaxFrameLen(MTU, LinkType) bytes. 0 means DefaultMTU.
	MTU int
	// LinkType is the framing of the frames (packet.Ethernet or
	// packet.RawIP): where the IP header is, for classifying frames with
	// no token and for ECN marking. 0 means packet.Ethernet.
	LinkType packet.LinkType
	// Limit is the most packets queued at once (DefaultLimit).
	Limit int
	// Flows is the number of flow slots (DefaultFlows).
	Flows int
	// Quantum is the DRR quantum in frame bytes (DefaultQuantum).
	Quantum int
	// Target and Interval are CoDel's (DefaultTarget, DefaultInterval);
	// they also drive early drop and the advisory policy. 0 < Target <=
	// Interval.
	Target, Interval time.Duration
	// ECN marks ECN-capable packets CE (RFC 3168) where CoDel or early
	// drop would drop them. Overflow always drops.
	ECN bool
	// DropBatch is the most packets one overflow drops (DefaultDropBatch);
	// it stops earlier once half the fattest flow's bytes are gone.
	DropBatch int
	// Batch is the most frames one Dequeue returns (DefaultBatch).
	Batch int
	// HashSeed seeds the hash of frames that come with no token and of
	// the flow index. Only the nexus picks it (a random value defeats
	// crafted collisions); 0 is a valid seed.
	HashSeed uint64
	// Advisory tunes the flow advisory policy; its zero fields take the
	// defaults documented on AdvisoryPolicy, Target and Interval come from
	// the fields above when left 0.
	Advisory AdvisoryPolicy
}

// resolve fills the defaults in and checks every field.
func (o Options) resolve() (Options, int, error) {
	if o.MTU == 0 {
		o.MTU = DefaultMTU
	}
	if o.LinkType == 0 {
		o.LinkType = packet.Ethernet
	}
	setDefault(&o.Limit, DefaultLimit)
	setDefault(&o.Flows, DefaultFlows)
	setDefault(&o.Quantum, DefaultQuantum)
	setDefault(&o.DropBatch, DefaultDropBatch)
	setDefault(&o.Batch, DefaultBatch)
	if o.Target == 0 {
		o.Target = DefaultTarget
	}
	if o.Interval == 0 {
		o.Interval = DefaultInterval
	}
	switch {
	case o.MTU < minMTU || o.MTU > maxMTU:
		return o, 0, fmt.Errorf("%w: MTU %d outside [%d, %d]", ErrInvalid, o.MTU, minMTU, maxMTU)
	case o.LinkType != packet.Ethernet && o.LinkType != packet.RawIP:
		return o, 0, fmt.Errorf("%w: link type %d is neither Ethernet nor raw IP", ErrInvalid, o.LinkType)
	case o.Limit < 1 || o.Limit > maxLimit:
		return o, 0, fmt.Errorf("%w: limit %d outside [1, %d]", ErrInvalid, o.Limit, maxLimit)
	case o.Flows < 1 || o.Flows > maxFlows:
		return o, 0, fmt.Errorf("%w: flows %d outside [1, %d]", ErrInvalid, o.Flows, maxFlows)
	case o.Quantum < 1 || o.Quantum > maxMTU:
		return o, 0, fmt.Errorf("%w: quantum %d outside [1, %d]", ErrInvalid, o.Quantum, maxMTU)
	case o.DropBatch < 1:
		return o, 0, fmt.Errorf("%w: drop batch %d below 1", ErrInvalid, o.DropBatch)
	case o.Batch < 1 || o.Batch > maxBatch:
		return o, 0, fmt.Errorf("%w: batch %d outside [1, %d]", ErrInvalid, o.Batch, maxBatch)
	case o.Target < 0 || o.Interval < 0 || o.Target > o.Interval:
		return o, 0, fmt.Errorf("%w: target %v and interval %v: want 0 < target <= interval", ErrInvalid, o.Target, o.Interval)
	}
	maxFrame := netif.MaxFrameLen(o.MTU, o.LinkType)
	a, err := o.Advisory.withDefaults(o.Target, o.Interval, o.Limit, maxFrame)
	if err != nil {
		return o, 0, err
	}
	o.Advisory = a
	return o, maxFrame, nil
}

func setDefault(v *int, d int) {
	if *v == 0 {
		*v = d
	}
}
