package flow

import (
	"strconv"
	"time"

	"github.com/skylane/skylane/packet"
)

// PortID names a flowswitch port: the channel of one app, or the host port.
type PortID uint32

// Kind is the mask an entry is registered under; it matches the shape of
// the entry's key (see the package invariants).
type Kind uint8

const (
	// Connected is a 5-tuple flow: protocol, local and remote address and
	// port.
	Connected Kind = iota + 1
	// Listener3 is a listener on one local address: protocol, local address
	// and port (packet.Key.Listener3).
	Listener3
	// Listener2 is a listener on any local address of one family: protocol
	// and local port (packet.Key.Listener2).
	Listener2
)

func (k Kind) String() string {
	switch k {
	case Connected:
		return "connected"
	case Listener3:
		return "listener3"
	case Listener2:
		return "listener2"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// State is an entry's life-cycle state. It only moves from Active to
// TornDown.
type State uint8

const (
	Active State = iota + 1
	TornDown
)

func (s State) String() string {
	switch s {
	case Active:
		return "active"
	case TornDown:
		return "torn-down"
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// Counters are an entry's traffic counters. In is received (towards the
// app), Out is transmitted (from the app).
type Counters struct {
	PacketsIn, BytesIn   uint64
	PacketsOut, BytesOut uint64
}

// SYN limit (docs/design.md §6.3): an app may send at most SYNRate SYNs per second
// on one flow, with bursts of SYNBurst. 20/s is far above what a legitimate
// connect or its retransmissions need (Linux retransmits a SYN after 1 s)
// and low enough that one flow cannot turn the device into a SYN flooder.
const (
	SYNRate  = 20
	SYNBurst = 20
)

// synCost is the bucket credit one SYN takes; the bucket holds at most
// synCap, the credit of a full burst. Credit is kept as time, so refilling
// is one subtraction and there is no rounding.
const (
	synCost = time.Second / SYNRate
	synCap  = SYNBurst * synCost
)

// Entry is one flow. The table creates it in Register; the fields behind the
// accessors are immutable afterwards except the state, the counters, the TCP
// flags, the SYN bucket and the Mark, which the owning worker updates.
//
// Layout: the receive path reads the first 64 bytes (key, port, kind,
// state, flags, mark) for every packet and the next 32 (counters) once per
// packet delivered. The entry is padded to 192 bytes, a Go size class of
// whole cache lines, so each entry starts on a line and a lookup's key
// compare and the queue mark cost one line (TestEntryLayout pins this).
type Entry struct {
	key   packet.Key // immutable
	port  PortID     // immutable
	kind  Kind       // immutable
	state State

	lastFlagsIn, lastFlagsOut packet.TCPFlags
	mark                      Mark
	counters                  Counters

	hash    uint64   // immutable: key.Hash(), the entry's place in the index
	id      [16]byte // immutable, from crypto/rand
	token   uint32   // immutable, unique in the table while the entry is active
	adv     uint32   // immutable, unique per port while the entry is active
	portIdx int      // index in the owner's portState.entries, while active

	synCredit time.Duration // SYN bucket credit, 0..synCap
	synLast   time.Time     // when synCredit was last refilled

	_ [24]byte // to 192 bytes (see the layout above)
}

// Mark is scratch space in each entry for the worker that owns the table;
// the table never reads or writes it. The flowswitch records in it which of
// its per-input-batch queues holds the flow's packets (Gen names the input
// batch, Slot the queue), so that finding a flow's queue is one load next to
// the key the lookup just compared, rather than a map lookup per packet.
type Mark struct {
	Gen  uint64
	Slot int32
}

// Mark returns the entry's scratch space (see Mark). The zero Mark is what a
// new entry has.
func (e *Entry) Mark() *Mark { return &e.mark }

// Key returns the entry's key, in the shape of its Kind.
func (e *Entry) Key() packet.Key { return e.key }

// ID returns the random 16-byte flow ID the app stamps into packet metadata.
func (e *Entry) ID() [16]byte { return e.id }

// Port returns the owner port.
func (e *Entry) Port() PortID { return e.port }

// Token returns the flow token, unique in the table among active entries.
// It is never 0.
func (e *Entry) Token() uint32 { return e.token }

// AdvisoryIndex returns the entry's slot in the owner channel's flow
// advisory table, in [0, Options.AdvisorySlots), or NoAdvisory when the
// port had no free slot as the flow was registered.
func (e *Entry) AdvisoryIndex() uint32 { return e.adv }

// Kind returns the mask the entry was registered under.
func (e *Entry) Kind() Kind { return e.kind }

// State returns Active or TornDown.
func (e *Entry) State() State { return e.state }

// Active reports whether the entry has not been torn down.
func (e *Entry) Active() bool { return e.state == Active }

// Counters returns a copy of the traffic counters.
func (e *Entry) Counters() Counters { return e.counters }

// LastFlags returns the TCP flags of the last segment counted in each
// direction (0 before the first, and for other protocols).
func (e *Entry) LastFlags() (in, out packet.TCPFlags) { return e.lastFlagsIn, e.lastFlagsOut }

// CountIn counts one received packet of n bytes with TCP flags f (0 for
// other protocols).
func (e *Entry) CountIn(n int, f packet.TCPFlags) { e.AddIn(1, uint64(n), f) }

// CountOut counts one transmitted packet of n bytes with TCP flags f (0 for
// other protocols).
func (e *Entry) CountOut(n int, f packet.TCPFlags) { e.AddOut(1, uint64(n), f) }

// AddIn counts packets received packets of bytes in all, the last of them
// with TCP flags last: CountIn for a batch, one update per batch.
func (e *Entry) AddIn(packets, bytes uint64, last packet.TCPFlags) {
	e.counters.PacketsIn += packets
	e.counters.BytesIn += bytes
	e.lastFlagsIn = last
}

// AddOut counts packets transmitted packets of bytes in all, the last of
// them with TCP flags last: CountOut for a batch.
func (e *Entry) AddOut(packets, bytes uint64, last packet.TCPFlags) {
	e.counters.PacketsOut += packets
	e.counters.BytesOut += bytes
	e.lastFlagsOut = last
}

// AllowSYN reports whether the app may send a SYN on this flow at now, and
// if so takes one from the flow's token bucket (SYNRate per second, bursts
// of SYNBurst; a new entry starts with a full bucket). A clock that goes
// backwards adds no credit.
func (e *Entry) AllowSYN(now time.Time) bool {
	if d := now.Sub(e.synLast); d > 0 {
		// now.Sub saturates, so the zero synLast of a new entry gives
		// a huge d and a full bucket.
		e.synCredit = min(e.synCredit+min(d, synCap), synCap)
		e.synLast = now
	}
	if e.synCredit < synCost {
		return false
	}
	e.synCredit -= synCost
	return true
}
