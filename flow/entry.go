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

// SYN limit (DESIGN §6.3): an app may send at most SYNRate SYNs per second
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
// flags and the SYN bucket, which the owning worker updates.
type Entry struct {
	key   packet.Key // immutable
	id    [16]byte   // immutable, from crypto/rand
	port  PortID     // immutable
	token uint32     // immutable, unique in the table while the entry is active
	adv   uint32     // immutable, unique per port while the entry is active
	kind  Kind       // immutable
	state State

	portIdx int // index in the owner's portState.entries, while active

	counters                  Counters
	lastFlagsIn, lastFlagsOut packet.TCPFlags

	synCredit time.Duration // SYN bucket credit, 0..synCap
	synLast   time.Time     // when synCredit was last refilled
}

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
// advisory table, in [0, Options.AdvisorySlots).
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
func (e *Entry) CountIn(n int, f packet.TCPFlags) {
	e.counters.PacketsIn++
	e.counters.BytesIn += uint64(n)
	e.lastFlagsIn = f
}

// CountOut counts one transmitted packet of n bytes with TCP flags f (0 for
// other protocols).
func (e *Entry) CountOut(n int, f packet.TCPFlags) {
	e.counters.PacketsOut++
	e.counters.BytesOut += uint64(n)
	e.lastFlagsOut = f
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
