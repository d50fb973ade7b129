package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/skylane/skylane/capture"
	"github.com/skylane/skylane/control"
	"github.com/skylane/skylane/internal/shm"
)

// Capture (OpCapture, skylane capture): the session's goroutine owns a
// capture.Ring the nexus's worker copies frames into; it reads the ring
// and sends the frames in batches on the session's socket, so a client
// that reads slowly, or not at all, stalls only this goroutine: the ring
// fills and its drops are counted, the worker never waits. A second
// goroutine waits for the client to close its end (or send anything,
// which ends the capture too).

// maxCaptures bounds the captures running at once, all sessions: each
// holds a ring of up to capture.MaxRingBytes.
const maxCaptures = 4

// ErrCaptureBusy: maxCaptures captures are running.
var errCaptureBusy = errors.New("capture: too many captures running on this nexus; stop one and try again")

// captureFilter turns the request into the ring's filter.
func captureFilter(req *control.CaptureRequest) (capture.Filter, error) {
	pts, err := capture.ParsePoints(strings.Join(req.Points, ","))
	if err != nil {
		return capture.Filter{}, fmt.Errorf("%w: %v", control.ErrBadRequest, err)
	}
	return capture.Filter{Points: pts, Apps: req.Apps, Proto: req.Proto, Host: req.Host, Port: req.Port,
		Reasons: req.Reasons}, nil
}

// ownApps returns the channels of the ports of uid's sessions, those
// apps names if apps is not empty.
func (s *Server) ownApps(uid uint32, apps []string) []string {
	var own []string
	for _, x := range s.sessionList() {
		p := x.portOf()
		if x.cred.UID != uid || p == nil {
			continue
		}
		name := p.Name()
		ok := len(apps) == 0
		for _, a := range apps {
			ok = ok || capture.AppMatches(a, name)
		}
		if ok {
			own = append(own, name)
		}
	}
	return own
}

// capture serves OpCapture until the client closes its end, the server
// stops, or the client stops taking batches for replyTimeout. The session
// ends with it.
func (ss *session) capture(req *control.CaptureRequest) {
	s := ss.s
	g, err := ss.grant()
	all := false
	if err == nil {
		all, err = g.Capture()
	}
	if err != nil {
		reply(ss.c, ss.refuse("capture", err))
		return
	}
	f, err := captureFilter(req)
	if err != nil {
		reply(ss.c, control.Failure(err))
		return
	}
	var own []string
	if !all {
		// observe = "own": only the ports of the user's own apps, as open
		// now (an app that opens its port later is not captured).
		if own = s.ownApps(ss.cred.UID, f.Apps); len(own) == 0 {
			reply(ss.c, ss.refuse("capture", fmt.Errorf("%w: uid %d has no app with a port open (observe = \"own\" captures only those)",
				control.ErrNotPermitted, ss.cred.UID)))
			return
		}
		f.Apps = own
	}
	if s.captures.Add(1) > maxCaptures {
		s.captures.Add(-1)
		reply(ss.c, control.Failure(errCaptureBusy))
		return
	}
	defer s.captures.Add(-1)
	ring, err := capture.NewRing(capture.Options{Filter: f, Snaplen: req.Snaplen, Slots: req.Slots})
	if err != nil {
		reply(ss.c, control.Failure(fmt.Errorf("%w: %v", control.ErrBadRequest, err)))
		return
	}
	// Capturing before the reply: a client sees every frame after it.
	s.n.AddCapture(ring)
	if !reply(ss.c, control.Reply{OK: true, Capture: &control.CaptureReply{
		LinkType: uint8(s.n.LinkType()), Snaplen: ring.Snaplen(), Apps: own}}) {
		s.n.RemoveCapture(ring)
		return
	}
	start := time.Now()
	s.log.Info("capture start", "session", ss.id, "uid", ss.cred.UID, "pid", ss.cred.PID, "own", !all,
		"points", req.Points, "apps", f.Apps, "snaplen", ring.Snaplen())
	watch := make(chan struct{})
	go func() {
		defer close(watch)
		var b [1]byte
		ss.c.Read(b[:]) // EOF when the client closes; an error when Serve closes the connection
		ring.Close()
	}()
	sent := ss.streamCapture(ring)
	s.n.RemoveCapture(ring) // the worker writes ring no more
	ss.c.Close()            // ends the watcher's read
	<-watch
	s.log.Info("capture end", "session", ss.id, "sent", sent, "matched", ring.Matched(), "ring_drops", ring.Drops(),
		"secs", time.Since(start).Round(time.Millisecond).Seconds())
}

// streamCapture sends ring's frames in batches, and an empty one at least
// every heartbeat, until the ring is closed or a send fails; it returns
// how many frames it sent.
func (ss *session) streamCapture(ring *capture.Ring) (sent uint64) {
	hb := time.Duration(control.CaptureHeartbeatMillis) * time.Millisecond
	buf := make([]byte, 0, control.CaptureMaxBatch)
	maxRec := capture.MaxRecordLen(ring.Snaplen())
	add := func(r *capture.Record) { buf = capture.AppendRecord(buf, r) }
	last := time.Now()
	for {
		open := ring.Wait(hb)
		for {
			buf = capture.StartBatch(buf, ring.Matched(), ring.Drops())
			k := 0
			for len(buf)+maxRec <= cap(buf) && ring.Read(1, add) == 1 {
				k++
			}
			if k == 0 && open && time.Since(last) < hb {
				break
			}
			if !send(ss.c, buf) {
				return sent
			}
			sent += uint64(k)
			last = time.Now()
			if k == 0 {
				break
			}
		}
		if !open {
			return sent
		}
	}
}

// CaptureStream is a capture's client end (skylane capture): StartCapture
// opens it, Next reads it batch by batch.
type CaptureStream struct {
	c     *net.UnixConn
	Reply control.CaptureReply // the nexus's answer: link type, snap length
	buf   []byte
}

// StartCapture asks the nexus at the control socket path for a capture.
func StartCapture(path string, req control.CaptureRequest) (*CaptureStream, error) {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("capture: dial %s (is a nexus serving its control socket there?): %w", path, err)
	}
	b, err := json.Marshal(control.Request{Op: control.OpCapture, Capture: &req})
	if err == nil {
		c.SetDeadline(time.Now().Add(replyTimeout))
		_, err = c.Write(b)
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("capture: send: %w", err)
	}
	cs := &CaptureStream{c: c, buf: make([]byte, control.CaptureMaxBatch+1)}
	k, _, flags, _, err := c.ReadMsgUnix(cs.buf, nil)
	if err == nil && (k == 0 || shm.Truncated(flags)) {
		err = errors.New("reply empty or too long")
	}
	var rep control.Reply
	if err == nil {
		err = json.Unmarshal(cs.buf[:k], &rep)
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("capture: reply: %w", err)
	}
	if !rep.OK || rep.Capture == nil {
		c.Close()
		return nil, fmt.Errorf("capture: %w", &control.RemoteError{Msg: rep.Error, Code: rep.Code})
	}
	cs.Reply = *rep.Capture
	return cs, nil
}

// Next waits for the next batch (the nexus sends one at least every
// control.CaptureHeartbeatMillis) and calls fn on each of its frames
// (Data valid only during fn). It returns the batch's counters.
func (cs *CaptureStream) Next(fn func(*capture.Record)) (capture.BatchHeader, error) {
	// Several heartbeats missed: the nexus is gone or wedged.
	cs.c.SetReadDeadline(time.Now().Add(20 * time.Duration(control.CaptureHeartbeatMillis) * time.Millisecond))
	k, _, flags, _, err := cs.c.ReadMsgUnix(cs.buf, nil)
	if err != nil {
		return capture.BatchHeader{}, fmt.Errorf("capture: read: %w", err)
	}
	if k == 0 {
		return capture.BatchHeader{}, errors.New("capture: the nexus ended the capture")
	}
	if shm.Truncated(flags) {
		return capture.BatchHeader{}, fmt.Errorf("capture: a batch longer than %d bytes", control.CaptureMaxBatch)
	}
	return capture.DecodeBatch(cs.buf[:k], fn)
}

// Close ends the capture: the nexus stops copying frames.
func (cs *CaptureStream) Close() error { return cs.c.Close() }
