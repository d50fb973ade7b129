package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/internal/shm"
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
// Name, Addrs, MTU, Gone and Err at any time.
//
// A reader goroutine, started by Open and joined by Close, owns the
// socket's receiving side: it hands each reply to the request waiting for
// it and notices at once when the nexus ends the session (it exited, was
// killed, or closed the port): then Gone is closed, Err and every request
// return an error wrapping ErrNexusGone, and the channel's waiter is
// interrupted so that nothing sleeps on a nexus that is not there.
type Session struct {
	app   *channel.App // immutable
	path  string       // immutable: the control socket, for errors
	name  string       // immutable
	addrs []netip.Addr // immutable
	mtu   int          // immutable
	eph   [2]uint16    // immutable: Reply.Ephemeral
	batch bool         // immutable: Reply.Batch, the nexus serves batch requests
	conn  *net.UnixConn

	replies chan Reply     // the reader's replies; capacity 1: one request at a time
	gone    chan struct{}  // closed by the reader when the session ends
	goneErr error          // written by the reader before it closes gone
	closing atomic.Bool    // Close began: the end of the session is ours
	reader  sync.WaitGroup // the reader goroutine

	mu     sync.Mutex // serialises requests; guards closed
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
	s := &Session{app: app, path: path, name: rep.Name, addrs: rep.Addrs, mtu: rep.MTU, eph: rep.Ephemeral, batch: rep.Batch, conn: conn,
		replies: make(chan Reply, 1), gone: make(chan struct{})}
	s.reader.Add(1)
	go s.read()
	return s, nil
}

// roundTrip sends req and reads its reply, before the reader runs; a
// refused request is a *RemoteError.
func roundTrip(conn *net.UnixConn, req Request) (Reply, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return Reply{}, err
	}
	conn.SetDeadline(time.Now().Add(requestTimeout))
	if _, err := conn.Write(b); err != nil {
		return Reply{}, fmt.Errorf("send %s: %w", req.Op, err)
	}
	buf := make([]byte, MaxMessage+1)
	rep, err := readReply(conn, buf, nil)
	if err != nil {
		return rep, fmt.Errorf("%s reply: %w", req.Op, err)
	}
	return rep, replyErr(rep)
}

// errEnded: the nexus ended the session (the socket's end of file).
var errEnded = errors.New("nexus ended the session")

// goodbye is the reason a nexus gives in its last message, a reply with
// ErrNexusGone's code that answers no request, before it ends a session
// (it is stopping, its interface went).
type goodbye string

func (g goodbye) Error() string { return string(g) }

// goneCode is ErrNexusGone's code: a reply with it is a goodbye.
var goneCode = CodeOf(ErrNexusGone)

// readReply reads and decodes one reply, with at most one descriptor if
// oob has room for it (Reply.file). Nothing in it is trusted: a reply with
// more descriptors, or anything else in its control message, is an error
// (and the descriptors are closed).
func readReply(conn *net.UnixConn, buf, oob []byte) (Reply, error) {
	var rep Reply
	k, ok, flags, _, err := conn.ReadMsgUnix(buf, oob)
	var fds []int
	if err == nil && ok > 0 {
		fds, err = shm.ParseRights(oob[:ok])
	}
	switch {
	case err != nil:
	case k == 0:
		err = errEnded
	case shm.Truncated(flags):
		err = fmt.Errorf("a reply of more than %d bytes, or with more than one descriptor", MaxMessage)
	case len(fds) > 1:
		err = fmt.Errorf("a reply with %d descriptors", len(fds))
	}
	if err == nil {
		if uerr := json.Unmarshal(buf[:k], &rep); uerr != nil {
			err = fmt.Errorf("bad reply: %w", uerr)
		}
	}
	if err != nil {
		for _, fd := range fds {
			shm.CloseFD(fd)
		}
		return Reply{}, err
	}
	if len(fds) == 1 {
		rep.file = os.NewFile(uintptr(fds[0]), "skylane-host-listener")
	}
	return rep, nil
}

func replyErr(rep Reply) error {
	if !rep.OK {
		return &RemoteError{Msg: rep.Error, Code: rep.Code}
	}
	return nil
}

// read is the reader goroutine: it passes replies on until the session
// ends, then records why (the nexus's goodbye, if it sent one), closes
// gone and wakes the channel's waiter. A reply nobody waits for (the one
// slot is full) is a protocol violation that ends the session too.
func (s *Session) read() {
	defer s.reader.Done()
	buf := make([]byte, MaxMessage+1)
	oob := make([]byte, shm.RightsSpace(1))
	var err error
	for {
		var rep Reply
		if rep, err = readReply(s.conn, buf, oob); err != nil {
			break
		}
		if !rep.OK && rep.Code == goneCode {
			err = goodbye(rep.Error) // the nexus says why it ends the session
			break
		}
		select {
		case s.replies <- rep:
			continue
		default:
			if rep.file != nil {
				rep.file.Close()
			}
			err = errors.New("a reply nobody asked for")
		}
		break
	}
	if s.closing.Load() {
		s.goneErr = ErrSessionClosed
	} else {
		var bye goodbye
		if errors.As(err, &bye) {
			s.goneErr = fmt.Errorf("control: the nexus at %s ended the session: %s: %w", s.path, string(bye), ErrNexusGone)
		} else if errors.Is(err, errEnded) || errors.Is(err, io.EOF) {
			s.goneErr = fmt.Errorf("control: the nexus at %s ended the session (it stopped, exited or was killed): %w", s.path, ErrNexusGone)
		} else {
			s.goneErr = fmt.Errorf("control: the nexus at %s: %v: %w", s.path, err, ErrNexusGone)
		}
		s.conn.Close() // a violation: make sure the nexus sees the end too
	}
	close(s.gone)
	s.app.Interrupt()
}

// Gone is closed when the session ended: the nexus went away (Err wraps
// ErrNexusGone), or Close ended it.
func (s *Session) Gone() <-chan struct{} { return s.gone }

// Err returns nil while the session lives, then why it ended: an error
// wrapping ErrNexusGone, or ErrSessionClosed after Close.
func (s *Session) Err() error {
	select {
	case <-s.gone:
		return s.goneErr
	default:
		return nil
	}
}

// ErrSessionClosed is returned by requests after Close.
var ErrSessionClosed = errors.New("control: session closed")

// request is requestFile for a request whose reply carries no descriptor
// (one that came anyway is closed).
func (s *Session) request(req Request) (Reply, error) {
	rep, err := s.requestFile(req)
	if rep.file != nil {
		rep.file.Close()
		rep.file = nil
	}
	return rep, err
}

// requestFile sends req and waits for its reply from the reader. A nexus that
// does not answer within requestTimeout is treated as gone: its session
// ends, since a late reply would answer the next request.
func (s *Session) requestFile(req Request) (Reply, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Reply{}, ErrSessionClosed
	}
	if err := s.Err(); err != nil {
		return Reply{}, err
	}
	b, err := json.Marshal(req)
	if err != nil {
		return Reply{}, err
	}
	s.conn.SetWriteDeadline(time.Now().Add(requestTimeout))
	if _, err := s.conn.Write(b); err != nil {
		if gerr := s.Err(); gerr != nil {
			return Reply{}, gerr
		}
		return Reply{}, fmt.Errorf("send %s: %w", req.Op, err)
	}
	t := time.NewTimer(requestTimeout)
	defer t.Stop()
	select {
	case rep := <-s.replies:
		return rep, replyErr(rep)
	case <-s.gone:
		// The reader passes a reply on before it ends the session: a
		// nexus that answered and then hung up did answer.
		select {
		case rep := <-s.replies:
			return rep, replyErr(rep)
		default:
		}
		return Reply{}, s.goneErr
	case <-t.C:
		s.conn.Close() // the reader sees it and ends the session
		<-s.gone
		return Reply{}, fmt.Errorf("%s: no reply within %v: %w", req.Op, requestTimeout, s.goneErr)
	}
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

// HostListener returns the kernel socket that reserves the port's
// listener flow key (TCP or UDP) in the kernel's stack, serving processes
// on the nexus's host (OpHostListener), or nil, nil if the nexus
// has none. The caller owns the file.
func (s *Session) HostListener(key packet.Key) (*os.File, error) {
	rep, err := s.requestFile(Request{Op: OpHostListener, Key: WireKey(key)})
	if err != nil {
		if rep.file != nil {
			rep.file.Close()
		}
		return nil, fmt.Errorf("control: host listener %v: %w", key, err)
	}
	return rep.file, nil
}

// Teardown tears down a flow the port registered.
func (s *Session) Teardown(key packet.Key) error {
	if _, err := s.request(Request{Op: OpTeardown, Key: WireKey(key)}); err != nil {
		return fmt.Errorf("control: teardown %v: %w", key, err)
	}
	return nil
}

// RegisterBatch registers keys, all of kind, in one request per MaxBatch
// keys (the nexus's OpRegisterBatch; one Register each from a nexus that
// does not offer it) and returns, for each key, what Register would have.
// It is what lets an app's stack register the connections its listeners
// accepted in batches (stack.BatchRegistrar).
func (s *Session) RegisterBatch(keys []packet.Key, kind flow.Kind) ([]channel.FlowInfo, []error) {
	fis := make([]channel.FlowInfo, len(keys))
	errs := make([]error, len(keys))
	if !s.batch {
		for i, k := range keys {
			fis[i], errs[i] = s.Register(k, kind)
		}
		return fis, errs
	}
	for lo := 0; lo < len(keys); lo += MaxBatch {
		chunk := keys[lo:min(lo+MaxBatch, len(keys))]
		flows, rerr := s.batchRequest(Request{Op: OpRegisterBatch, Kind: kind}, chunk)
		for i, k := range chunk {
			err := rerr
			if err == nil {
				err = flows[i].err()
			}
			if err == nil && len(flows[i].FlowID) != len(fis[lo+i].ID) {
				err = fmt.Errorf("reply with a flow ID of %d bytes", len(flows[i].FlowID))
			}
			if err != nil {
				errs[lo+i] = fmt.Errorf("control: register %v: %w", k, err)
				continue
			}
			copy(fis[lo+i].ID[:], flows[i].FlowID)
			fis[lo+i].Advisory = flows[i].Advisory
		}
	}
	return fis, errs
}

// Close asks the nexus to close the port (its flows are torn down before
// the reply), ends the session, joins the reader and detaches the channel
// (unmapping its memory, closing its descriptors). If the nexus is gone the
// port went with it, and Close only releases this side. Safe to call more
// than once.
func (s *Session) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.closing.Store(true) // before the request: the nexus ends the session after its reply
	var err error
	if s.Err() == nil {
		b, _ := json.Marshal(Request{Op: OpClose})
		s.conn.SetWriteDeadline(time.Now().Add(requestTimeout))
		if _, werr := s.conn.Write(b); werr == nil {
			t := time.NewTimer(requestTimeout)
			select {
			case rep := <-s.replies:
				err = replyErr(rep)
			case <-s.gone: // the nexus went: the port went with it
			case <-t.C:
			}
			t.Stop()
		}
	}
	s.conn.Close()
	s.reader.Wait()
	if cerr := s.app.Close(); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("control: close port %s: %w", s.name, err)
	}
	return nil
}

// TeardownBatch tears down keys, flows the port registered, in one request
// per MaxBatch keys (one Teardown each from a nexus without batch
// requests), and returns, for each key, what Teardown would have.
func (s *Session) TeardownBatch(keys []packet.Key) []error {
	errs := make([]error, len(keys))
	if !s.batch {
		for i, k := range keys {
			errs[i] = s.Teardown(k)
		}
		return errs
	}
	for lo := 0; lo < len(keys); lo += MaxBatch {
		chunk := keys[lo:min(lo+MaxBatch, len(keys))]
		flows, rerr := s.batchRequest(Request{Op: OpTeardownBatch}, chunk)
		for i, k := range chunk {
			err := rerr
			if err == nil {
				err = flows[i].err()
			}
			if err != nil {
				errs[lo+i] = fmt.Errorf("control: teardown %v: %w", k, err)
			}
		}
	}
	return errs
}

// batchRequest sends req with keys (at most MaxBatch) and returns the
// reply's per-flow outcomes, one per key, or why the request as a whole
// failed.
func (s *Session) batchRequest(req Request, keys []packet.Key) ([]FlowReply, error) {
	req.Keys = make([]*Key, len(keys))
	for i, k := range keys {
		req.Keys[i] = WireKey(k)
	}
	rep, err := s.request(req)
	if err != nil {
		return nil, err
	}
	if len(rep.Flows) != len(keys) {
		return nil, fmt.Errorf("%s: reply with %d outcomes for %d keys", req.Op, len(rep.Flows), len(keys))
	}
	return rep.Flows, nil
}

// err is the flow's refusal as a *RemoteError, or nil.
func (f FlowReply) err() error {
	if f.Error == "" && f.Code == "" {
		return nil
	}
	return &RemoteError{Msg: f.Error, Code: f.Code}
}
