package takeover

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/skylane/skylane/internal/shm"
	"github.com/skylane/skylane/netif/afxdp"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/nexus/control"
)

// StateVersion is the version of State and of the steps: a nexus hands
// over only to a process of the same version.
//
// 2: the XDP program's fragment map goes over with its other descriptors.
const StateVersion = 2

// Errors.
var (
	// ErrVersion: the two processes speak different state versions.
	ErrVersion = errors.New("takeover: incompatible state version")
	// ErrNotSupported: the running nexus cannot be handed over (its
	// driver, or an app in its own process).
	ErrNotSupported = errors.New("takeover: not supported by the running nexus")
	// ErrAborted: the hand-over stopped before its commit; the old nexus
	// serves on.
	ErrAborted = errors.New("takeover: aborted before commit")
)

// Steps, as Options.DieAt names them (tests kill the new process there).
const (
	StepHello   = "hello"   // after the hello, before the freeze request
	StepFreeze  = "freeze"  // after asking to freeze, before the state arrived
	StepState   = "state"   // the state and descriptors received, nothing adopted
	StepAdopted = "adopted" // link, nexus and ports adopted, before the commit
)

// State is what the old process hands over besides descriptors. The
// descriptors follow in this order: the link's (afxdp.HandoverFDs), each
// port's (nexus.PortHandover.FDs: its channel's, its reservations'), each
// session's connection, the control socket and its lock file.
type State struct {
	Version int                    `json:"version"`
	Driver  string                 `json:"driver"`
	Link    afxdp.Handover         `json:"link"`
	Nexus   nexus.Handover         `json:"nexus"`
	Server  control.ServerHandover `json:"server"`
}

func (st *State) fdCount() int {
	n := afxdp.HandoverFDs + len(st.Server.Sessions) + 2
	for i := range st.Nexus.Ports {
		n += st.Nexus.Ports[i].FDs()
	}
	return n
}

// message is one step's message. State travels as chunks after its
// header, descriptors in batches after the chunks.
type message struct {
	Type    string `json:"type"` // hello, ready, refuse, freeze, state, commit, committed, abort
	Version int    `json:"version,omitempty"`
	PID     int    `json:"pid,omitempty"`
	Error   string `json:"error,omitempty"`
	Bytes   int    `json:"bytes,omitempty"` // state: bytes of JSON in chunks
	FDs     int    `json:"fds,omitempty"`   // state: descriptors in batches
}

const (
	maxMessage = 64 << 10 // a chunk of state; SOCK_SEQPACKET keeps it whole
	maxState   = 64 << 20 // a state larger than this is refused
)

func send(c *net.UnixConn, m message) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if _, err := c.Write(b); err != nil {
		return fmt.Errorf("takeover: send %s: %w", m.Type, err)
	}
	return nil
}

func recv(c *net.UnixConn, deadline time.Time) (message, error) {
	c.SetReadDeadline(deadline)
	b := make([]byte, maxMessage)
	n, err := c.Read(b)
	if err != nil {
		return message{}, fmt.Errorf("takeover: receive: %w", err)
	}
	if n == 0 {
		return message{}, fmt.Errorf("takeover: receive: peer gone")
	}
	var m message
	if err := json.Unmarshal(b[:n], &m); err != nil {
		return message{}, fmt.Errorf("takeover: receive: bad message: %w", err)
	}
	return m, nil
}

// sendState sends st's JSON in chunks and fds in batches (it does not
// close them).
func sendState(c *net.UnixConn, st *State, fds []int) error {
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("takeover: encode state: %w", err)
	}
	if err := send(c, message{Type: "state", Version: st.Version, Bytes: len(b), FDs: len(fds)}); err != nil {
		return err
	}
	for off := 0; off < len(b); off += maxMessage {
		if _, err := c.Write(b[off:min(off+maxMessage, len(b))]); err != nil {
			return fmt.Errorf("takeover: send state: %w", err)
		}
	}
	for off := 0; off < len(fds); off += shm.MaxFDs {
		if err := shm.SendFDs(c, []byte("fds"), fds[off:min(off+shm.MaxFDs, len(fds))]); err != nil {
			return fmt.Errorf("takeover: send descriptors: %w", err)
		}
	}
	return nil
}

// recvState receives what sendState sent after its header h. On error
// the descriptors received so far are closed.
func recvState(c *net.UnixConn, h message, deadline time.Time) (_ State, _ []int, err error) {
	var fds []int // received so far; closed on error
	defer func() {
		if err != nil {
			closeFDs(fds)
		}
	}()
	if h.Bytes <= 0 || h.Bytes > maxState || h.FDs < afxdp.HandoverFDs || h.FDs > 1<<20 {
		return State{}, nil, fmt.Errorf("takeover: state of %d bytes and %d descriptors", h.Bytes, h.FDs)
	}
	c.SetReadDeadline(deadline)
	b := make([]byte, 0, h.Bytes)
	chunk := make([]byte, maxMessage)
	for len(b) < h.Bytes {
		n, err := c.Read(chunk)
		if err != nil || n == 0 {
			return State{}, nil, fmt.Errorf("takeover: receive state: %v", errOr(err, "peer gone"))
		}
		b = append(b, chunk[:n]...)
	}
	if len(b) != h.Bytes {
		return State{}, nil, fmt.Errorf("takeover: state of %d bytes, announced %d", len(b), h.Bytes)
	}
	for len(fds) < h.FDs {
		_, got, err := shm.RecvFDs(c, 16)
		fds = append(fds, got...)
		if err != nil {
			return State{}, nil, fmt.Errorf("takeover: receive descriptors: %w", err)
		}
		if len(got) == 0 {
			return State{}, nil, errors.New("takeover: a descriptor batch without descriptors")
		}
	}
	if len(fds) != h.FDs {
		return State{}, nil, fmt.Errorf("takeover: %d descriptors, announced %d", len(fds), h.FDs)
	}
	st, err := decodeState(b, len(fds), h.Version)
	if err != nil {
		return State{}, nil, err
	}
	return st, fds, nil
}

// decodeState decodes a state of version that came with nfds descriptors
// and checks it names as many. (Each part is checked again where it is
// adopted.)
func decodeState(b []byte, nfds, version int) (State, error) {
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("takeover: decode state: %w", err)
	}
	if st.Version != version {
		return st, fmt.Errorf("%w: the state says version %d", ErrVersion, st.Version)
	}
	if st.fdCount() != nfds {
		return st, fmt.Errorf("takeover: state needs %d descriptors, got %d", st.fdCount(), nfds)
	}
	return st, nil
}

func errOr(err error, s string) any {
	if err != nil {
		return err
	}
	return s
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			shm.CloseFD(fd)
		}
	}
}
