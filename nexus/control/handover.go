package control

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/internal/shm"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/packet"
)

// Handing the control sessions to another nexus process (a takeover,
// docs/upgrade.md). Freeze parks the accept loop and every session
// between two requests (a request being served is finished first; the
// next one waits in the socket, whose messages the kernel keeps), and
// exports each session's connection as a duplicated descriptor with what
// the session knows (its app's name, its port, its flows). Thaw resumes
// them; Abandon lets them go without a word to the apps and without
// closing their ports (the nexus abandons those). The new process
// rebuilds the sessions (Adopt) from the connections, reading each peer's
// credentials from the kernel again and matching them against its own
// policy, before it serves.
//
// A capture session is not handed over: Freeze ends it (its reader sees
// the connection close, as when a nexus stops).

// ServerHandover is a frozen server's sessions.
type ServerHandover struct {
	Seq      uint64            `json:"seq"`     // session ids handed out
	Refused  uint64            `json:"refused"` // requests refused, all sessions
	Sessions []SessionHandover `json:"sessions"`
}

// SessionHandover is one session.
type SessionHandover struct {
	ID      uint64      `json:"id"`
	Started time.Time   `json:"started"`
	Name    string      `json:"name,omitempty"` // the app's name, "" before open
	Port    string      `json:"port,omitempty"` // its port's channel name, "" before open
	Flows   []SavedFlow `json:"flows,omitempty"`
	Refused uint64      `json:"refused"`
}

// SavedFlow is a flow a session registered.
type SavedFlow struct {
	Key  packet.Key `json:"key"`
	Kind flow.Kind  `json:"kind"`
}

// freeze is one Freeze of a server, until Thaw or Abandon.
type freeze struct {
	thaw    chan struct{} // closed by Thaw
	abandon chan struct{} // closed by Abandon
}

// parkTimeout bounds how long Freeze waits for a session to finish the
// request it serves: a session stuck writing to an app that does not
// read (up to replyTimeout) fails the takeover, which the old nexus
// survives.
const parkTimeout = 2 * time.Second

// Freeze parks the server and exports its sessions: ServerHandover, a
// duplicate of each session's connection (conns[i] is Sessions[i]'s) and
// of the listening socket; the caller owns the descriptors. On error the
// server is thawed and serves on.
func (s *Server) Freeze(ln *net.UnixListener) (h ServerHandover, conns []int, lnFD int, err error) {
	s.mu.Lock()
	if s.closed || s.frz != nil {
		s.mu.Unlock()
		return h, nil, -1, errors.New("control: freeze: server stopping, or frozen already")
	}
	fr := &freeze{thaw: make(chan struct{}), abandon: make(chan struct{})}
	s.frz, s.lastFrz = fr, fr
	s.mu.Unlock()
	var dups []int // the sessions' connections so far; closed on error
	defer func() {
		if err != nil {
			for _, fd := range dups {
				shm.CloseFD(fd)
			}
			s.Thaw(ln)
		}
	}()
	// The accept loop first: every session there will be is then in
	// the list.
	past := time.Unix(1, 0)
	if s.serving.Load() {
		select {
		case <-s.acceptParked: // a stale signal of an earlier freeze
		default:
		}
		ln.SetDeadline(past)
		select {
		case <-s.acceptParked:
		case <-time.After(parkTimeout):
			return h, nil, -1, errors.New("control: freeze: the accept loop did not stop")
		}
	}
	s.mu.Lock()
	list := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		list = append(list, ss)
	}
	s.mu.Unlock()
	for _, ss := range list {
		select {
		case <-ss.parked: // a stale signal of an earlier freeze
		default:
		}
		if ss.capturing.Load() {
			ss.c.Close() // ends the capture: it is not handed over
			<-ss.exited
			continue
		}
		ss.c.SetReadDeadline(past)
	}
	deadline := time.After(parkTimeout)
	for _, ss := range list {
		if ss.capturing.Load() {
			continue
		}
		select {
		case <-ss.parked:
		case <-ss.exited:
			continue // gone meanwhile: its port is closed, nothing to hand over
		case <-deadline:
			return h, nil, -1, fmt.Errorf("control: freeze: session %d did not stop within %v (its app is not reading its replies)", ss.id, parkTimeout)
		}
		sh := SessionHandover{ID: ss.id, Started: ss.started}
		ss.mu.Lock()
		sh.Name, sh.Refused = ss.name, ss.refused
		if ss.port != nil {
			sh.Port = ss.port.Name()
		}
		for fk := range ss.flows {
			sh.Flows = append(sh.Flows, SavedFlow{fk.key, fk.kind})
		}
		ss.mu.Unlock()
		fd, err := dupConn(ss.c)
		if err != nil {
			return h, nil, -1, fmt.Errorf("control: freeze session %d: %w", ss.id, err)
		}
		dups = append(dups, fd)
		h.Sessions = append(h.Sessions, sh)
	}
	if lnFD, err = dupConn(ln); err != nil {
		return h, nil, -1, fmt.Errorf("control: freeze listener: %w", err)
	}
	h.Seq, h.Refused = s.seq.Load(), s.refused.Load()
	return h, dups, lnFD, nil
}

// Thaw resumes a frozen server: the takeover did not commit.
func (s *Server) Thaw(ln *net.UnixListener) {
	s.mu.Lock()
	fr := s.frz
	s.frz = nil
	for ss := range s.sessions {
		ss.c.SetReadDeadline(time.Time{})
	}
	s.mu.Unlock()
	if fr != nil {
		ln.SetDeadline(time.Time{})
		close(fr.thaw)
	}
}

// Abandon ends a frozen server whose sessions another process took over:
// the sessions' goroutines return without closing their ports or saying
// goodbye, the listener is closed without removing the socket file, and
// Serve returns.
func (s *Server) Abandon(ln *net.UnixListener) {
	s.mu.Lock()
	fr := s.frz
	s.frz = nil
	s.closed = true
	s.mu.Unlock()
	ln.SetUnlinkOnClose(false)
	if fr != nil {
		close(fr.abandon)
	}
	ln.Close()
}

// parkAccept is the accept loop's answer to an error: true if a Freeze
// stopped it and a Thaw resumed it.
func (s *Server) parkAccept(err error) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	thawed, _ := s.parkOn(s.acceptParked)
	return thawed
}

// park is a session's answer to a read that failed: true if a Freeze
// stopped it (its read timed out) and a Thaw resumed it; after an Abandon
// the session is handed over (handedOver).
func (ss *session) park(timedOut bool) bool {
	if !timedOut {
		return false
	}
	thawed, abandoned := ss.s.parkOn(ss.parked)
	switch {
	case thawed:
		ss.c.SetReadDeadline(time.Time{})
	case abandoned:
		ss.handedOver.Store(true)
	}
	return thawed
}

// parkOn waits, after a read that a Freeze's deadline ended, until the
// Freeze is thawed or abandoned; it says it parked on parked first. With
// no Freeze ever, it returns at once (neither).
func (s *Server) parkOn(parked chan<- struct{}) (thawed, abandoned bool) {
	s.mu.Lock()
	fr := s.lastFrz
	s.mu.Unlock()
	if fr == nil {
		return false, false
	}
	select {
	case parked <- struct{}{}:
	default:
	}
	select {
	case <-fr.thaw:
		return true, false
	case <-fr.abandon:
		return false, true
	}
}

// Adopt adds the sessions another nexus's server handed over (Freeze),
// before Serve: conns[i] is h.Sessions[i]'s connection (Adopt owns them
// from now on), and ports maps a channel name to the port the nexus
// adopted for it; Adopt removes the ports it gives a session, so what is
// left in ports belongs to no session (the caller closes them). Each peer's credentials are read from the kernel again
// and matched against this server's policy. A session whose connection
// is not a Unix socket, or whose port is missing, is closed and counted
// in lost.
func (s *Server) Adopt(h ServerHandover, conns []int, ports map[string]*nexus.RemotePort) (lost int, err error) {
	if len(conns) != len(h.Sessions) {
		for _, fd := range conns {
			shm.CloseFD(fd)
		}
		return len(h.Sessions), fmt.Errorf("control: adopt: %d connections for %d sessions", len(conns), len(h.Sessions))
	}
	s.seq.Store(max(s.seq.Load(), h.Seq))
	s.refused.Store(h.Refused)
	for i, sh := range h.Sessions {
		f := os.NewFile(uintptr(conns[i]), "skylane-session")
		c, err := shm.UnixConn(f) // a duplicate: f is closed either way
		f.Close()
		if err != nil {
			lost++
			continue
		}
		cred, err := credOf(c)
		var port *nexus.RemotePort
		if sh.Port != "" {
			port = ports[sh.Port]
			delete(ports, sh.Port) // claimed: what is left, no session claimed
		}
		if err != nil || sh.Port != "" && port == nil {
			if port != nil {
				port.Close()
			}
			c.Close()
			lost++
			continue
		}
		ss := newSession(s, c, sh.ID, cred)
		ss.started, ss.name, ss.port, ss.refused = sh.Started, sh.Name, port, sh.Refused
		for _, f := range sh.Flows {
			ss.flows[flowKey{f.Key, f.Kind}] = struct{}{}
		}
		if !s.add(ss) {
			if port != nil {
				port.Close()
			}
			c.Close()
			lost++
			continue
		}
		s.wg.Add(1)
		go ss.run()
	}
	return lost, nil
}

// dupConn duplicates a socket's descriptor (close-on-exec).
func dupConn(c interface {
	SyscallConn() (syscall.RawConn, error)
}) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	cerr := rc.Control(func(s uintptr) { fd, err = shm.Dup(int(s)) })
	if cerr != nil {
		return -1, cerr
	}
	return fd, err
}

// handedOver reports whether Abandon ended the server.
func (s *Server) handedOver() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastFrz == nil {
		return false
	}
	select {
	case <-s.lastFrz.abandon:
		return true
	default:
		return false
	}
}
