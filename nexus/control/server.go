package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/skylane/skylane/control"
	"github.com/skylane/skylane/internal/peercred"
	"github.com/skylane/skylane/internal/shm"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/nexus/policy"
)

// replyTimeout bounds how long a session waits for its app to take a
// reply (or the channel) off the socket: an app that stops reading loses
// its session, not a goroutine for ever.
const replyTimeout = 10 * time.Second

// goodbyeTimeout bounds Shutdown's last message to each app: it is a
// courtesy, and the connection closes after it anyway.
const goodbyeTimeout = 100 * time.Millisecond

// Listen makes a SOCK_SEQPACKET Unix socket at path for Serve. The caller
// closes it; Close removes the socket file. A daemon uses ListenSocket.
func Listen(path string) (*net.UnixListener, error) {
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("control: listen: %w", err)
	}
	return ln, nil
}

// Serve serves app sessions on ln for nexus n with NewServer's defaults
// (no policy file: root and the nexus's own user may attach) until ctx is
// cancelled or ln is closed; see Server.Serve.
func Serve(ctx context.Context, n *nexus.Nexus, ln *net.UnixListener) error {
	return NewServer(n, ServerOptions{}).Serve(ctx, ln)
}

// ServerOptions configure a Server.
type ServerOptions struct {
	// Policy says what each app may do, by its peer credentials; nil is
	// policy.RootOnly. Whatever it says, uid 0 and the nexus's own uid may
	// do everything.
	Policy *policy.Policy
	// Log gets one line per session start and end and per refusal; nil
	// discards them.
	Log *slog.Logger
	// Ephemeral is the range of local ports apps' outgoing connections
	// may take; zero takes the nexus's (nexus.Options.Ephemeral: with a
	// kernel sharing the device, a range disjoint from the kernel's own
	// ephemeral range), or if it has none the kernel's
	// (/proc/sys/net/ipv4/ip_local_port_range), a range the kernel keeps
	// clear of its servers.
	Ephemeral [2]uint16
}

// Server answers app sessions for one nexus. Its methods are safe for
// concurrent use; Serve runs once.
type Server struct {
	n    *nexus.Nexus
	log  *slog.Logger
	eph  [2]uint16 // immutable
	self uint32    // the nexus's uid; immutable
	wg   sync.WaitGroup

	refused  atomic.Uint64 // requests the policy refused, all sessions
	seq      atomic.Uint64 // session ids
	captures atomic.Int64  // captures running (capture.go)

	// Takeover (handover.go).
	serving      atomic.Bool   // Serve's accept loop runs
	acceptParked chan struct{} // 1-buffered: the accept loop parked for a Freeze

	mu       sync.Mutex
	frz      *freeze               // the Freeze in progress, or nil; guarded by mu
	lastFrz  *freeze               // the latest Freeze; guarded by mu
	pol      *policy.Policy        // guarded by mu
	sessions map[*session]struct{} // open sessions; guarded by mu
	closed   bool                  // Serve is stopping: no new sessions
}

// NewServer returns a server for n. Serve serves it.
func NewServer(n *nexus.Nexus, o ServerOptions) *Server {
	if o.Policy == nil {
		o.Policy = policy.RootOnly()
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Ephemeral == [2]uint16{} {
		o.Ephemeral = n.Ephemeral()
	}
	if o.Ephemeral == [2]uint16{} {
		o.Ephemeral = kernelEphemeral()
	}
	return &Server{n: n, log: o.Log, eph: o.Ephemeral, self: uint32(os.Geteuid()),
		pol: o.Policy, sessions: make(map[*session]struct{}), acceptParked: make(chan struct{}, 1)}
}

// Serve serves app sessions on ln (a "unixpacket" listener: ListenSocket
// or Listen) until ctx is cancelled or ln is closed, and returns nil then
// (or Accept's error). Each connection is one app session in its own
// goroutine; Serve closes every session (their ports and flows with them)
// and waits for their goroutines before it returns. It closes ln.
func (s *Server) Serve(ctx context.Context, ln *net.UnixListener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	s.serving.Store(true)
	var err error
	for {
		var c *net.UnixConn
		if c, err = ln.AcceptUnix(); err != nil {
			if s.parkAccept(err) {
				continue // a takeover froze the server, then thawed it
			}
			break
		}
		cred, cerr := credOf(c)
		if cerr != nil {
			s.log.Warn("session refused: no peer credentials", "err", cerr)
			c.Close()
			continue
		}
		ss := newSession(s, c, s.seq.Add(1), cred)
		if !s.add(ss) {
			c.Close()
			break
		}
		s.wg.Add(1)
		go ss.run()
	}
	ln.Close()
	handed := s.handedOver()
	if !handed {
		s.closeAll("")
	}
	s.wg.Wait()
	if handed {
		return nil // Abandon: another nexus serves the sessions
	}
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return fmt.Errorf("control: accept: %w", err)
}

// add registers a new session and matches it against the policy, both
// under s.mu, so that a SetPolicy either came before (the session gets the
// new policy) or regrants it.
func (s *Server) add(ss *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	ss.g, ss.gErr = s.grantLocked(ss.cred) // not shared yet: no ss.mu
	s.sessions[ss] = struct{}{}
	return true
}

// grantLocked matches c against the current policy; s.mu is held.
func (s *Server) grantLocked(c policy.Cred) (*policy.Grant, error) {
	if c.UID == s.self {
		return s.pol.GrantAll(c), nil
	}
	return s.pol.Grant(c)
}

// SetPolicy replaces the policy and matches every open session against
// it again; it returns how many sessions it matched. Sessions keep their
// ports and the flows they hold (the new policy is not applied to them);
// their later requests are checked against the new rule, and a session no
// rule matches any more has every later request refused.
func (s *Server) SetPolicy(p *policy.Policy) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pol = p
	for x := range s.sessions {
		g, err := s.grantLocked(x.cred)
		x.mu.Lock() // s.mu, then a session's mu: the one order
		x.g, x.gErr = g, err
		x.mu.Unlock()
		if err != nil {
			s.log.Warn("session no longer allowed by the policy; its later requests are refused",
				"session", x.id, "app", x.appName(), "uid", x.cred.UID, "pid", x.cred.PID, "err", err)
		}
	}
	return len(s.sessions)
}

// Refused returns how many requests the policy refused, in all sessions.
func (s *Server) Refused() uint64 { return s.refused.Load() }

// Shutdown tells every app why its session ends (a last reply with
// control.ErrNexusGone's code and reason as its text, which an app waiting
// for a reply takes as its answer), then closes the sessions. New sessions
// are refused; Serve still returns only when its context is done or its
// listener closed.
func (s *Server) Shutdown(reason string) { s.closeAll(reason) }

// closeAll closes every session's connection, after a goodbye if reason
// is not "": its goroutine's read or write fails, and it closes the port
// on its way out.
func (s *Server) closeAll(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	bye, _ := json.Marshal(control.Reply{Error: reason, Code: control.CodeOf(control.ErrNexusGone)})
	for ss := range s.sessions {
		if reason != "" {
			ss.c.SetWriteDeadline(time.Now().Add(goodbyeTimeout))
			ss.c.Write(bye)
		}
		ss.c.Close()
	}
}

func (s *Server) remove(ss *session) {
	s.mu.Lock()
	delete(s.sessions, ss)
	s.mu.Unlock()
}

// sessionList returns the open sessions.
func (s *Server) sessionList() []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := make([]*session, 0, len(s.sessions))
	for x := range s.sessions {
		ss = append(ss, x)
	}
	return ss
}

// kernelEphemeral reads the kernel's ephemeral port range, or returns its
// default (32768-60999) if it cannot.
func kernelEphemeral() [2]uint16 {
	var lo, hi uint16
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if _, err := fmt.Sscan(string(b), &lo, &hi); err == nil && lo > 0 && hi >= lo {
			return [2]uint16{lo, hi}
		}
	}
	return [2]uint16{32768, 60999}
}

// credOf reads c's peer credentials.
func credOf(c *net.UnixConn) (policy.Cred, error) {
	pc, err := peercred.Get(c)
	if err != nil {
		return policy.Cred{}, err
	}
	return policy.Cred{UID: pc.UID, GID: pc.GID, PID: pc.PID, Groups: pc.Groups}, nil
}

// readRequest reads one request; false if the app is gone or broke the
// protocol (a message too long, carrying descriptors, or not decoding).
// timedOut says a read deadline (a takeover's Freeze) ended the read.
func readRequest(c *net.UnixConn, buf []byte) (req control.Request, ok, timedOut bool) {
	// No control buffer: descriptors an app sends are closed by the
	// kernel and the message flagged MSG_CTRUNC.
	k, _, flags, _, err := c.ReadMsgUnix(buf, nil)
	if err != nil {
		return req, false, errors.Is(err, os.ErrDeadlineExceeded)
	}
	if k == 0 || shm.Truncated(flags) {
		return req, false, false
	}
	req, err = control.DecodeRequest(buf[:k])
	return req, err == nil, false
}

// reply sends rep; false if the app is gone or does not take it in time.
func reply(c *net.UnixConn, rep control.Reply) bool {
	b, err := json.Marshal(rep)
	if err != nil || len(b) > control.MaxMessage {
		return false
	}
	return send(c, b)
}

func send(c *net.UnixConn, b []byte) bool {
	c.SetWriteDeadline(time.Now().Add(replyTimeout))
	_, err := c.Write(b)
	return err == nil
}
