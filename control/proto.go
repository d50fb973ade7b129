package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet"
)

// MaxMessage bounds one message in either direction: a request is a few
// hundred bytes of JSON, a reply a few hundred more with the addresses; a
// batch of MaxBatch flows (keys of about 110 bytes each way, an error
// text of at most MaxBatchError bytes per flow) stays below it. Anything
// longer is a protocol violation (the kernel flags it truncated).
const MaxMessage = 64 << 10

// MaxBatch bounds the flows of one batch request (OpRegisterBatch,
// OpTeardownBatch); a larger batch is sent as several requests.
const MaxBatch = 128

// MaxBatchError bounds one flow's error text in a batch reply: the nexus
// cuts a longer one, so a batch reply stays within MaxMessage.
const MaxBatchError = 256

// MaxNameLen bounds a port name: it becomes part of the channel's and its
// memfds' names (the kernel allows 249 bytes for a memfd name).
const MaxNameLen = 64

// Request operations.
const (
	OpOpen     = "open"     // the session's first request, and only once
	OpRegister = "register" // register a flow on the session's port
	OpTeardown = "teardown" // tear down a flow the port registered
	OpClose    = "close"    // close the port; the nexus then closes the session
	// OpRegisterBatch registers up to MaxBatch flows of one kind in one
	// round trip (an app's stack registers the connections its listeners
	// accepted so); OpTeardownBatch tears up to MaxBatch down. The reply
	// has one FlowReply per key, in order. A nexus that offers them says
	// so in its open reply (Reply.Batch).
	OpRegisterBatch = "register-batch"
	OpTeardownBatch = "teardown-batch"
	// OpHostListener asks for the kernel socket that reserves one of the
	// port's listener flows, TCP or UDP, in the kernel's stack (Key): its reply
	// carries a duplicate as SCM_RIGHTS, the one reply with a descriptor,
	// or none when the nexus has no such socket (no kernel shares its
	// device). Through it the app accepts connections (TCP), or
	// exchanges datagrams (UDP), with processes on the nexus's host at
	// its address, which never cross the device.
	OpHostListener = "host-listener"
	// OpStats asks for the nexus's counters (skylane stats --nexus); the
	// policy must allow the session to observe. It needs no open, and its
	// reply is larger than MaxMessage (see the nexus's stats client).
	OpStats = "stats"
)

// Request is one app → nexus message.
type Request struct {
	Op string `json:"op"`
	// Open.
	Name       string `json:"name,omitempty"`
	Advisories bool   `json:"advisories,omitempty"` // the app honours flow advisories
	// Layout is the channel.LayoutVersion the app was built for; the
	// nexus refuses another (ErrLayout) before it makes the channel.
	Layout int `json:"layout,omitempty"`
	// Register and Teardown; Kind for RegisterBatch too.
	Key  *Key      `json:"key,omitempty"`
	Kind flow.Kind `json:"kind,omitempty"`
	// RegisterBatch and TeardownBatch: 1..MaxBatch keys.
	Keys []*Key `json:"keys,omitempty"`
	// Capture (OpCapture).
	Capture *CaptureRequest `json:"capture,omitempty"`
}

// Key is a packet.Key on the wire: its fields, the addresses as 16 bytes
// (base64 in JSON) exactly as packet.Key holds them.
type Key struct {
	Local      []byte `json:"l"`
	Remote     []byte `json:"r"`
	LocalPort  uint16 `json:"lp"`
	RemotePort uint16 `json:"rp"`
	Version    uint8  `json:"v"`
	Proto      uint8  `json:"p"`
}

// WireKey is k on the wire.
func WireKey(k packet.Key) *Key {
	return &Key{Local: k.Local[:], Remote: k.Remote[:], LocalPort: k.LocalPort, RemotePort: k.RemotePort, Version: k.Version, Proto: k.Proto}
}

// PacketKey returns the packet.Key; the flow table checks what it means.
// DecodeRequest has checked a request's key already.
func (w *Key) PacketKey() (packet.Key, error) {
	var k packet.Key
	if len(w.Local) != len(k.Local) || len(w.Remote) != len(k.Remote) {
		return k, fmt.Errorf("key addresses of %d and %d bytes, want %d", len(w.Local), len(w.Remote), len(k.Local))
	}
	copy(k.Local[:], w.Local)
	copy(k.Remote[:], w.Remote)
	k.LocalPort, k.RemotePort, k.Version, k.Proto = w.LocalPort, w.RemotePort, w.Version, w.Proto
	return k, nil
}

// Reply is one nexus → app message, the answer to the request before it.
// An open reply with OK is followed by the channel (channel.Channel.Send).
type Reply struct {
	OK bool `json:"ok"`
	// Error and Code say why a request failed (Failure); Code names the
	// sentinel error (see CodeOf), empty for one without.
	Error string `json:"error,omitempty"`
	Code  string `json:"code,omitempty"`
	// Open.
	Name  string       `json:"name,omitempty"`
	Addrs []netip.Addr `json:"addrs,omitempty"`
	MTU   int          `json:"mtu,omitempty"`
	// Ephemeral is the range of local ports, [lo, hi], the nexus lets the
	// app's outgoing connections take (the kernel's ephemeral range); a
	// dial from another port is refused unless the policy lets the app
	// bind it. Zero: the nexus did not say.
	Ephemeral [2]uint16 `json:"ephemeral,omitzero"`
	// Batch, in an open reply: the nexus serves OpRegisterBatch and
	// OpTeardownBatch (an older one closes a session that sends them).
	Batch bool `json:"batch,omitempty"`
	// Register.
	FlowID   []byte `json:"flow_id,omitempty"`
	Advisory uint32 `json:"advisory,omitempty"`
	// RegisterBatch and TeardownBatch: each key's outcome, in order.
	Flows []FlowReply `json:"flows,omitempty"`
	// Capture.
	Capture *CaptureReply `json:"capture,omitempty"`

	// file is the descriptor that came with the reply (OpHostListener),
	// owned by whoever holds the Reply.
	file *os.File
}

// FlowReply is one flow's outcome in a batch reply: its flow ID and
// advisory entry (register), or why it failed (Error and Code, as in
// Reply; Error at most MaxBatchError bytes).
type FlowReply struct {
	FlowID   []byte `json:"id,omitempty"`
	Advisory uint32 `json:"adv,omitempty"`
	Error    string `json:"error,omitempty"`
	Code     string `json:"code,omitempty"`
}

// FlowFailure is the FlowReply refusing one flow of a batch with err.
func FlowFailure(err error) FlowReply {
	msg := err.Error()
	if len(msg) > MaxBatchError {
		msg = msg[:MaxBatchError-3] + "..."
	}
	return FlowReply{Error: msg, Code: CodeOf(err)}
}

// ErrBadRequest: a request was malformed or out of order; the nexus
// closes the session.
var ErrBadRequest = errors.New("control: bad request")

// DecodeRequest parses and checks one request message. It never panics.
func DecodeRequest(b []byte) (Request, error) {
	var r Request
	if len(b) > MaxMessage {
		return r, fmt.Errorf("%w: %d bytes, at most %d", ErrBadRequest, len(b), MaxMessage)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	switch r.Op {
	case OpOpen:
		if err := checkName(r.Name); err != nil {
			return r, err
		}
	case OpRegister:
		if r.Kind < flow.Connected || r.Kind > flow.Listener2 {
			return r, fmt.Errorf("%w: flow kind %d", ErrBadRequest, r.Kind)
		}
		fallthrough
	case OpTeardown, OpHostListener:
		if r.Key == nil {
			return r, fmt.Errorf("%w: %s without a key", ErrBadRequest, r.Op)
		}
		if _, err := r.Key.PacketKey(); err != nil {
			return r, fmt.Errorf("%w: %v", ErrBadRequest, err)
		}
	case OpRegisterBatch, OpTeardownBatch:
		if r.Op == OpRegisterBatch && (r.Kind < flow.Connected || r.Kind > flow.Listener2) {
			return r, fmt.Errorf("%w: flow kind %d", ErrBadRequest, r.Kind)
		}
		if len(r.Keys) == 0 || len(r.Keys) > MaxBatch {
			return r, fmt.Errorf("%w: %s of %d keys, want 1..%d", ErrBadRequest, r.Op, len(r.Keys), MaxBatch)
		}
		for i, k := range r.Keys {
			if k == nil {
				return r, fmt.Errorf("%w: %s: key %d missing", ErrBadRequest, r.Op, i)
			}
			if _, err := k.PacketKey(); err != nil {
				return r, fmt.Errorf("%w: %s: key %d: %v", ErrBadRequest, r.Op, i, err)
			}
		}
	case OpCapture:
		if r.Capture == nil {
			return r, fmt.Errorf("%w: capture without its filter", ErrBadRequest)
		}
		if err := r.Capture.check(); err != nil {
			return r, err
		}
	case OpClose, OpStats:
	default:
		return r, fmt.Errorf("%w: unknown op %q", ErrBadRequest, r.Op)
	}
	return r, nil
}

// checkName accepts 1 to MaxNameLen letters, digits, '.', '_' and '-':
// the name ends up in memfd names and in the nexus's stats.
func checkName(s string) error {
	if len(s) == 0 || len(s) > MaxNameLen {
		return fmt.Errorf("%w: port name of %d bytes, want 1..%d", ErrBadRequest, len(s), MaxNameLen)
	}
	for _, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return fmt.Errorf("%w: port name %q: only letters, digits, '.', '_' and '-'", ErrBadRequest, s)
		}
	}
	return nil
}

// CheckLayout returns nil if an app that named layout version v at open
// can attach to a channel of this build's layout, or an error wrapping
// ErrLayout that says which versions differ and what to do.
func CheckLayout(v int) error {
	if v == channel.LayoutVersion {
		return nil
	}
	if v == 0 {
		return fmt.Errorf("%w: the app names none (built before version 3), the nexus speaks %d: rebuild the app against the nexus's Skylane version", ErrLayout, channel.LayoutVersion)
	}
	return fmt.Errorf("%w: the app speaks %d, the nexus %d: rebuild the app against the nexus's Skylane version", ErrLayout, v, channel.LayoutVersion)
}
