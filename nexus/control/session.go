package control

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/skylane/skylane/control"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/internal/shm"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/nexus/policy"
	"github.com/skylane/skylane/packet"
)

// flowKey is a flow a session registered: its key in its kind's shape.
type flowKey struct {
	key  packet.Key
	kind flow.Kind
}

// session is one app's connection.
type session struct {
	s       *Server
	c       *net.UnixConn
	id      uint64      // immutable
	started time.Time   // immutable
	cred    policy.Cred // the peer's credentials; immutable

	// Takeover (handover.go).
	parked     chan struct{} // 1-buffered: parked for a Freeze
	exited     chan struct{} // closed when run returns
	capturing  atomic.Bool   // serving a capture (not handed over)
	handedOver atomic.Bool   // abandoned to another nexus: run leaves port and connection alone

	mu      sync.Mutex // guards the fields below: SetPolicy and stats read them
	g       *policy.Grant
	gErr    error             // why no rule matches, if g is nil
	port    *nexus.RemotePort // nil before open and after close
	name    string            // the name the app opened its port with
	flows   map[flowKey]struct{}
	refused uint64 // requests the policy refused
}

func newSession(s *Server, c *net.UnixConn, id uint64, cred policy.Cred) *session {
	return &session{s: s, c: c, id: id, started: time.Now(), cred: cred, flows: make(map[flowKey]struct{}),
		parked: make(chan struct{}, 1), exited: make(chan struct{})}
}

// run serves the app until its connection drops (the app exited or
// crashed), it sends something malformed, or Serve stops; then the port
// is closed, which tears its flows down.
func (ss *session) run() {
	s := ss.s
	defer s.wg.Done()
	defer close(ss.exited)
	why := "app closed its session"
	defer func() {
		if ss.handedOver.Load() {
			// Another nexus serves the app now, on a duplicate of
			// the connection; the port is the abandoned nexus's.
			s.remove(ss)
			ss.c.Close()
			return
		}
		ss.mu.Lock()
		port, flows := ss.port, len(ss.flows)
		ss.port = nil
		clear(ss.flows)
		ss.mu.Unlock()
		if port != nil {
			port.Close()
		}
		s.remove(ss)
		ss.c.Close()
		s.log.Info("session end", "session", ss.id, "app", ss.appName(), "uid", ss.cred.UID, "pid", ss.cred.PID,
			"flows", flows, "refused", ss.refusedCount(), "secs", time.Since(ss.started).Round(time.Millisecond).Seconds(), "why", why)
	}()
	cred := ss.cred
	g, _ := ss.grant()
	rule := "none"
	if g != nil {
		rule = g.Describe()
	}
	s.log.Info("session start", "session", ss.id, "uid", cred.UID, "gid", cred.GID, "pid", cred.PID, "rule", rule)

	buf := make([]byte, control.MaxMessage+1)
	for {
		req, ok, timedOut := readRequest(ss.c, buf)
		if !ok {
			if ss.park(timedOut) {
				continue // a takeover froze the session, then thawed it
			}
			why = "connection closed, or a malformed request"
			return
		}
		var rep control.Reply
		switch req.Op {
		case control.OpOpen:
			if ss.hasPort() {
				why = "a second open"
				return
			}
			var sent bool
			if rep, sent = ss.open(req); sent {
				continue
			}
			if rep.OK {
				why = "app gone while its channel was sent"
				return
			}
		case control.OpRegister, control.OpTeardown:
			port := ss.portOf()
			if port == nil {
				why = req.Op + " before open"
				return
			}
			key, _ := req.Key.PacketKey() // checked by DecodeRequest
			rep = ss.flowRequest(port, req.Op, key, req.Kind)
		case control.OpRegisterBatch, control.OpTeardownBatch:
			port := ss.portOf()
			if port == nil {
				why = req.Op + " before open"
				return
			}
			rep = ss.batchRequest(port, req)
		case control.OpHostListener:
			port := ss.portOf()
			if port == nil {
				why = req.Op + " before open"
				return
			}
			key, _ := req.Key.PacketKey() // checked by DecodeRequest
			if !ss.hostListener(port, key) {
				why = "app did not take its host listener"
				return
			}
			continue
		case control.OpStats:
			if !ss.stats() {
				why = "app did not take its stats"
				return
			}
			continue
		case control.OpCapture:
			ss.capturing.Store(true)
			ss.capture(req.Capture) // the session's last request
			why = "capture ended"
			return
		case control.OpClose:
			rep = control.Reply{OK: true}
			ss.mu.Lock()
			port := ss.port
			ss.port = nil
			clear(ss.flows)
			ss.mu.Unlock()
			if port != nil {
				if err := port.Close(); err != nil {
					rep = control.Failure(err)
				}
			}
			reply(ss.c, rep)
			return
		}
		if !reply(ss.c, rep) {
			why = "app did not take its reply"
			return
		}
	}
}

// open opens the session's port and sends its channel. sent: the reply and
// the channel went out (else rep is to be sent, or rep.OK says the app went
// away midway).
func (ss *session) open(req control.Request) (rep control.Reply, sent bool) {
	s := ss.s
	g, err := ss.grant()
	if err == nil {
		err = control.CheckLayout(req.Layout)
	}
	if err != nil {
		return ss.refuse("open", err), false
	}
	rp, err := s.n.OpenRemotePort(req.Name, nexus.PortOptions{Advisories: req.Advisories, Rate: g.Rate(), MaxPool: g.MaxPool()})
	if err != nil {
		return control.Failure(err), false
	}
	ss.mu.Lock()
	ss.port, ss.name = rp, req.Name
	ss.mu.Unlock()
	rep = control.Reply{OK: true, Name: rp.Name(), Addrs: rp.Addrs(), MTU: rp.MTU(), Ephemeral: s.eph, Batch: true}
	if !reply(ss.c, rep) {
		return rep, false
	}
	ss.c.SetWriteDeadline(time.Now().Add(replyTimeout))
	if err := rp.Send(ss.c); err != nil {
		return rep, false
	}
	s.log.Info("port open", "session", ss.id, "app", req.Name, "channel", rp.Name(), "uid", ss.cred.UID, "pid", ss.cred.PID,
		"max_pool", g.MaxPool(), "rate", g.Rate(), "max_flows", g.MaxFlows())
	return rep, true
}

// flowRequest registers or tears down a flow on the session's port,
// registering only what the policy allows.
func (ss *session) flowRequest(port *nexus.RemotePort, op string, key packet.Key, kind flow.Kind) control.Reply {
	if op == control.OpTeardown {
		if err := port.Teardown(key); err != nil {
			return control.Failure(err)
		}
		ss.forget(key)
		return control.Reply{OK: true}
	}
	if err := ss.check(key, kind); err != nil {
		return ss.refuse("register "+kind.String()+" "+key.String(), err)
	}
	fi, err := port.Register(key, kind)
	if err != nil {
		return control.Failure(err)
	}
	ss.mu.Lock()
	ss.flows[flowKey{key, kind}] = struct{}{}
	ss.mu.Unlock()
	return control.Reply{OK: true, FlowID: fi.ID[:], Advisory: fi.Advisory}
}

// batchRequest registers or tears down a batch of flows on the session's
// port, in one request to the nexus's worker: each key as flowRequest
// would (the policy checked per key, the flow count including the batch's
// own), each with its own outcome.
func (ss *session) batchRequest(port *nexus.RemotePort, req control.Request) control.Reply {
	keys := make([]packet.Key, len(req.Keys))
	for i, w := range req.Keys {
		keys[i], _ = w.PacketKey() // checked by DecodeRequest
	}
	flows := make([]control.FlowReply, len(keys))
	if req.Op == control.OpTeardownBatch {
		for i, err := range port.TeardownBatch(keys) {
			if err != nil {
				flows[i] = control.FlowFailure(err)
			}
		}
		for _, k := range keys {
			ss.forget(k)
		}
		return control.Reply{OK: true, Flows: flows}
	}
	// The policy first, key by key, the batch's earlier keys counted as
	// registered; then the allowed ones in one request.
	allowed := make([]packet.Key, 0, len(keys))
	idx := make([]int, 0, len(keys))
	var first error
	for i, k := range keys {
		if err := ss.checkN(k, req.Kind, len(allowed)); err != nil {
			flows[i] = control.FlowFailure(err)
			if first == nil {
				first = fmt.Errorf("register %v %v: %w", req.Kind, k, err)
			}
			continue
		}
		allowed = append(allowed, k)
		idx = append(idx, i)
	}
	if n := len(keys) - len(allowed); n > 0 {
		// One line for the batch: a listener's burst of refused
		// connections is one refusal in the log, counted in full.
		ss.refuseN(fmt.Sprintf("register-batch: %d of %d flows", n, len(keys)), first, uint64(n))
	}
	if len(allowed) > 0 {
		fis, errs := port.RegisterBatch(allowed, req.Kind)
		ss.mu.Lock()
		for j, i := range idx {
			if errs[j] != nil {
				flows[i] = control.FlowFailure(errs[j])
				continue
			}
			ss.flows[flowKey{allowed[j], req.Kind}] = struct{}{}
			flows[i] = control.FlowReply{FlowID: fis[j].ID[:], Advisory: fis[j].Advisory}
		}
		ss.mu.Unlock()
	}
	return control.Reply{OK: true, Flows: flows}
}

// check applies the policy to registering key as kind: a listener on a
// chosen port needs the rule's port; a connected flow on a port the
// session listens on is an accepted connection; any other connected flow
// is an outgoing connection, which needs dial and a local port from the
// ephemeral range (or one the rule lets it bind).
func (ss *session) check(key packet.Key, kind flow.Kind) error { return ss.checkN(key, kind, 0) }

// checkN is check with extra more flows counted as the session's: those
// of a batch it is about to register.
func (ss *session) checkN(key packet.Key, kind flow.Kind, extra int) error {
	g, err := ss.grant()
	if err != nil || g.Root() {
		return err
	}
	ss.mu.Lock()
	n := len(ss.flows)
	_, l3 := ss.flows[flowKey{key.Listener3(), flow.Listener3}]
	_, l2 := ss.flows[flowKey{key.Listener2(), flow.Listener2}]
	ss.mu.Unlock()
	// What the flow is for first, its count last: a refusal names the
	// most specific reason.
	if err := ss.checkKind(g, key, kind, l3 || l2); err != nil {
		return err
	}
	return g.Flows(n + extra)
}

// checkKind is check without the flow count. listening: the session
// holds a listener the key's local address and port fall under.
func (ss *session) checkKind(g *policy.Grant, key packet.Key, kind flow.Kind, listening bool) error {
	local, remote := key.LocalAddrPort(), key.RemoteAddrPort()
	switch kind {
	case flow.Listener2:
		return g.Listen(key.Proto, netip.Addr{}, key.LocalPort)
	case flow.Listener3:
		return g.Listen(key.Proto, local.Addr(), key.LocalPort)
	}
	if listening {
		return nil // an accepted connection, or a reply from a bound port
	}
	if err := g.Dial(key.Proto, local.Addr(), remote.Addr()); err != nil {
		return err
	}
	eph := ss.s.eph
	if key.LocalPort >= eph[0] && key.LocalPort <= eph[1] {
		return nil
	}
	if g.Listen(key.Proto, local.Addr(), key.LocalPort) == nil {
		return nil
	}
	return fmt.Errorf("%w: uid %d may not dial from local port %d: outgoing connections take a port in %d-%d (the ephemeral range the nexus hands out, see the open reply), or one its rule lets it listen on",
		control.ErrNotPermitted, ss.cred.UID, key.LocalPort, eph[0], eph[1])
}

// hostListener answers OpHostListener: the kernel socket reserving the
// port's listener flow key goes with the reply (SCM_RIGHTS), if there is
// one. The port only hands out its own flows' sockets, and only while a
// rule matches the session. false: the app did
// not take the reply.
func (ss *session) hostListener(port *nexus.RemotePort, key packet.Key) bool {
	if _, err := ss.grant(); err != nil {
		// No rule matches the session any more: its flows stay, but it
		// gets nothing new.
		return reply(ss.c, ss.refuse("host-listener "+key.String(), err))
	}
	f, err := port.HostListener(key)
	if err != nil {
		return reply(ss.c, control.Failure(err))
	}
	if f == nil {
		return reply(ss.c, control.Reply{OK: true})
	}
	defer f.Close() // the app has its own once sent
	b, err := json.Marshal(control.Reply{OK: true})
	if err != nil {
		return false
	}
	ss.c.SetWriteDeadline(time.Now().Add(replyTimeout))
	_, _, err = ss.c.WriteMsgUnix(b, shm.Rights(int(f.Fd())), nil)
	return err == nil
}

// grant returns the session's grant, or why it has none.
func (ss *session) grant() (*policy.Grant, error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.g, ss.gErr
}

// refuse counts and logs a refusal and returns its reply.
func (ss *session) refuse(what string, err error) control.Reply {
	ss.refuseN(what, err, 1)
	return control.Failure(err)
}

// refuseN counts n refusals and logs them in one line, err the first.
func (ss *session) refuseN(what string, err error, n uint64) {
	ss.mu.Lock()
	ss.refused += n
	ss.mu.Unlock()
	ss.s.refused.Add(n)
	ss.s.log.Warn("refused", "session", ss.id, "app", ss.appName(), "uid", ss.cred.UID, "pid", ss.cred.PID, "request", what, "err", err)
}

// forget drops key, in every kind, from the session's flows.
func (ss *session) forget(key packet.Key) {
	ss.mu.Lock()
	for _, kind := range []flow.Kind{flow.Connected, flow.Listener3, flow.Listener2} {
		delete(ss.flows, flowKey{key, kind})
	}
	ss.mu.Unlock()
}

func (ss *session) hasPort() bool { return ss.portOf() != nil }

func (ss *session) portOf() *nexus.RemotePort {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.port
}

func (ss *session) appName() string {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.name
}

func (ss *session) refusedCount() uint64 {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.refused
}
