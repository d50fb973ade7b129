package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet"
)

// requestTimeout bounds one request's round trip: a nexus runs requests
// between two datapath rounds, so anything near this means it is stuck.
const requestTimeout = 10 * time.Second

// OpenOptions are an app's wishes for its port.
type OpenOptions struct {
	// Advisories says the app honours flow advisories: it holds a
	// suspended flow's packets back, so the nexus may suspend its flows
	// rather than drop their packets.
	Advisories bool
}

// Session is an app's end of one control session: one port on the nexus
// serving the socket, with the app end of its channel. Register, Teardown
// and Close are safe from any goroutine (requests are serialised); App,
// Name, Addrs and MTU at any time.
type Session struct {
	app   *channel.App // immutable
	name  string       // immutable
	addrs []netip.Addr // immutable
	mtu   int          // immutable
	eph   [2]uint16    // immutable: Reply.Ephemeral

	mu     sync.Mutex // serialises requests; guards conn and closed
	conn   *net.UnixConn
	closed bool
}

// Open dials the nexus's control socket at path, opens a port named name
// (letters, digits, '.', '_', '-'; at most MaxNameLen bytes) and attaches
// its channel. The caller must Close the Session.
func Open(path, name string, o OpenOptions) (_ *Session, err error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	conn, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("control: dial %s (is the nexus serving its control socket there?): %w", path, err)
	}
	defer func() {
		if err != nil {
			conn.Close()
		}
	}()
	rep, err := roundTrip(conn, Request{Op: OpOpen, Name: name, Advisories: o.Advisories, Layout: channel.LayoutVersion})
	if err != nil {
		return nil, fmt.Errorf("control: open port %q: %w", name, err)
	}
	if rep.MTU <= 0 || len(rep.Addrs) == 0 {
		return nil, fmt.Errorf("control: open port %q: reply without MTU or addresses", name)
	}
	app, err := channel.Receive(conn)
	if err != nil {
		return nil, fmt.Errorf("control: open port %q: %w", name, err)
	}
	conn.SetDeadline(time.Time{})
	return &Session{app: app, name: rep.Name, addrs: rep.Addrs, mtu: rep.MTU, eph: rep.Ephemeral, conn: conn}, nil
}

// roundTrip sends req and reads its reply; a refused request is a
// *RemoteError.
func roundTrip(conn *net.UnixConn, req Request) (Reply, error) {
	var rep Reply
	b, err := json.Marshal(req)
	if err != nil {
		return rep, err
	}
	conn.SetDeadline(time.Now().Add(requestTimeout))
	if _, err := conn.Write(b); err != nil {
		return rep, fmt.Errorf("send %s: %w", req.Op, err)
	}
	buf := make([]byte, MaxMessage+1)
	k, _, flags, _, err := conn.ReadMsgUnix(buf, nil)
	if err != nil {
		return rep, fmt.Errorf("%s reply: %w", req.Op, err)
	}
	if k == 0 {
		return rep, fmt.Errorf("%s reply: nexus closed the session", req.Op)
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		return rep, fmt.Errorf("%s reply: more than %d bytes", req.Op, MaxMessage)
	}
	if err := json.Unmarshal(buf[:k], &rep); err != nil {
		return rep, fmt.Errorf("%s reply: %w", req.Op, err)
	}
	if !rep.OK {
		return rep, &RemoteError{Msg: rep.Error, Code: rep.Code}
	}
	return rep, nil
}

// ErrSessionClosed is returned by requests after Close.
var ErrSessionClosed = errors.New("control: session closed")

func (s *Session) request(req Request) (Reply, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Reply{}, ErrSessionClosed
	}
	return roundTrip(s.conn, req)
}

// App returns the app end of the port's channel. The Session owns it.
func (s *Session) App() *channel.App { return s.app }

// Name returns the port's channel name, as the nexus named it.
func (s *Session) Name() string { return s.name }

// Addrs returns the addresses the port's flows may use locally.
func (s *Session) Addrs() []netip.Addr { return append([]netip.Addr(nil), s.addrs...) }

// MTU returns the largest IP packet the port may send.
func (s *Session) MTU() int { return s.mtu }

// Ephemeral returns the local port range, [lo, hi], the nexus lets the
// app's outgoing connections take (its stack should pick from it), or
// zero if the nexus did not say.
func (s *Session) Ephemeral() [2]uint16 { return s.eph }

// Register registers a flow on the port. A refused registration is a
// *RemoteError that unwraps to the contract's sentinel errors (see
// RemoteError).
func (s *Session) Register(key packet.Key, kind flow.Kind) (channel.FlowInfo, error) {
	var fi channel.FlowInfo
	rep, err := s.request(Request{Op: OpRegister, Key: WireKey(key), Kind: kind})
	if err != nil {
		return fi, fmt.Errorf("control: register %v: %w", key, err)
	}
	if len(rep.FlowID) != len(fi.ID) {
		return fi, fmt.Errorf("control: register %v: reply with a flow ID of %d bytes", key, len(rep.FlowID))
	}
	copy(fi.ID[:], rep.FlowID)
	fi.Advisory = rep.Advisory
	return fi, nil
}

// Teardown tears down a flow the port registered.
func (s *Session) Teardown(key packet.Key) error {
	if _, err := s.request(Request{Op: OpTeardown, Key: WireKey(key)}); err != nil {
		return fmt.Errorf("control: teardown %v: %w", key, err)
	}
	return nil
}

// Close asks the nexus to close the port (its flows are torn down before
// the reply), ends the session and detaches the channel. If the nexus is
// gone the port went with it. Safe to call more than once.
func (s *Session) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	_, err := roundTrip(s.conn, Request{Op: OpClose})
	var re *RemoteError
	if err != nil && !errors.As(err, &re) {
		err = nil // the session is gone: the nexus closed the port with it
	}
	s.conn.Close()
	if cerr := s.app.Close(); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("control: close port %s: %w", s.name, err)
	}
	return nil
}
