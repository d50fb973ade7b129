package channel

import (
	"errors"
	"fmt"

	"github.com/skylane/skylane/ring"
)

// EventKind says what an event-ring entry means.
type EventKind uint16

const (
	// EventSegmentAdded: Arg is a buffer segment now active (map it).
	EventSegmentAdded EventKind = 1 + iota
	// EventSegmentRemoved: Arg is a segment returned to the OS (unmap it).
	EventSegmentRemoved
	// EventAdvisory: Arg is an advisory-table index whose state changed.
	EventAdvisory
	// EventDefunct: the nexus closed this channel; Arg is the DefunctReason.
	EventDefunct
	// EventRecall: Arg is how many buffers the app should hand back from
	// its alloc ring through the free ring: the nexus shrank the app's
	// working set, and buffers parked in an idle app's alloc ring would
	// otherwise pin their segments (the nexus cannot take back what it
	// produced). App.Events does it.
	EventRecall
)

// Event is one entry of the event ring (nexus → app).
type Event struct {
	Kind EventKind
	Arg  uint32
	Aux  uint16
}

func (e Event) slot() ring.Slot { return ring.Slot{Index: e.Arg, Len: e.Aux, Flags: uint16(e.Kind)} }

func eventOf(s ring.Slot) Event { return Event{Kind: EventKind(s.Flags), Arg: s.Index, Aux: s.Len} }

// DefunctReason says why the nexus closed a channel.
type DefunctReason uint32

const (
	ReasonNone          DefunctReason = iota
	ReasonRingCorrupt                 // a ring index moved backwards or past its bound
	ReasonWildBuffer                  // a buffer index outside the pool or in a released segment
	ReasonNotOwned                    // a buffer the app does not hold (foreign, or freed twice)
	ReasonBadLength                   // a slot length beyond the buffer size
	ReasonEventOverflow               // the app let its event ring and backlog overflow
	ReasonStalled                     // the app left its RX ring undrained too long
	ReasonClosed                      // the nexus shut the channel down
	numReasons
)

var reasonNames = [numReasons]string{"none", "ring_corrupt", "wild_buffer", "not_owned", "bad_length", "event_overflow", "stalled", "closed"}

func (r DefunctReason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason_%d", uint32(r))
}

// ErrDefunct is the error every call returns once the nexus closed the
// channel; errors.Is(err, ErrDefunct) holds for a *DefunctError.
var ErrDefunct = errors.New("channel defunct")

// DefunctError says why a channel was closed by the nexus.
type DefunctError struct {
	Channel string
	Reason  DefunctReason
	Detail  string // what the nexus saw, when known
}

func (e *DefunctError) Error() string {
	s := fmt.Sprintf("channel %q defunct: %s", e.Channel, e.Reason)
	if e.Detail != "" {
		s += " (" + e.Detail + ")"
	}
	if e.Reason != ReasonClosed {
		s += "; the nexus reclaimed its memory: open a new channel"
	}
	return s
}

// Is makes errors.Is(err, ErrDefunct) true.
func (e *DefunctError) Is(target error) bool { return target == ErrDefunct }

// Counters are a channel's statistics, published by the nexus in the stats
// region (read-only to the app).
type Counters struct {
	TxPackets     uint64 // packets taken from the TX ring
	TxBytes       uint64
	RxPackets     uint64 // packets put on the RX ring
	RxBytes       uint64
	RxDrops       uint64 // packets not delivered because the RX ring was full
	AllocFails    uint64 // buffers the pool could not supply (at its maximum)
	Notifications uint64 // eventfd signals sent to the app
	Wakeups       uint64 // eventfd waits the nexus side woke from
	Reclaimed     uint64 // buffers returned through the free ring
	AllocHanded   uint64 // buffers put on the alloc ring
	SegmentsAdded uint64
	SegmentsFreed uint64
	Events        uint64 // events put on the event ring (segment changes, advisories)
	Suspends      uint64 // advisory entries set SUSPENDED (SetAdvisory)
	Resumes       uint64 // advisory entries cleared of SUSPENDED
}

const numCounters = 15

func (c *Counters) array() [numCounters]uint64 {
	return [numCounters]uint64{c.TxPackets, c.TxBytes, c.RxPackets, c.RxBytes, c.RxDrops, c.AllocFails,
		c.Notifications, c.Wakeups, c.Reclaimed, c.AllocHanded, c.SegmentsAdded, c.SegmentsFreed,
		c.Events, c.Suspends, c.Resumes}
}

func countersFrom(a [numCounters]uint64) Counters {
	return Counters{a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13], a[14]}
}
