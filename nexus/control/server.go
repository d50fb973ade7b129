package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/control"
	"github.com/skylane/skylane/nexus"
)

// replyTimeout bounds how long a session waits for its app to take a
// reply (or the channel) off the socket: an app that stops reading loses
// its session, not a goroutine for ever.
const replyTimeout = 10 * time.Second

// Listen makes a SOCK_SEQPACKET Unix socket at path for Serve. The caller
// closes it; Close removes the socket file.
func Listen(path string) (*net.UnixListener, error) {
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("control: listen: %w", err)
	}
	return ln, nil
}

// Serve serves app sessions on ln (a "unixpacket" listener, see Listen)
// for nexus n until ctx is cancelled or ln is closed, and returns nil then
// (or Accept's error). Each connection is one app session in its own
// goroutine; Serve closes every session (their ports and flows with them)
// and waits for their goroutines before it returns. It closes ln.
func Serve(ctx context.Context, n *nexus.Nexus, ln *net.UnixListener) error {
	s := &server{n: n, conns: make(map[*net.UnixConn]struct{})}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var err error
	for {
		var c *net.UnixConn
		if c, err = ln.AcceptUnix(); err != nil {
			break
		}
		if !s.add(c) {
			c.Close()
			break
		}
		s.wg.Add(1)
		go s.session(c)
	}
	ln.Close()
	s.closeAll()
	s.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return fmt.Errorf("control: accept: %w", err)
}

type server struct {
	n  *nexus.Nexus
	wg sync.WaitGroup // one per session goroutine

	mu     sync.Mutex
	conns  map[*net.UnixConn]struct{} // open sessions' connections
	closed bool                       // Serve is stopping: no new sessions
}

func (s *server) add(c *net.UnixConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

// closeAll closes every session's connection: its goroutine's read or
// write fails, and it closes the port on its way out.
func (s *server) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
}

// session serves one app until its connection drops (the app exited or
// crashed), it sends something malformed, or Serve stops; then the port
// is closed, which tears its flows down.
func (s *server) session(c *net.UnixConn) {
	defer s.wg.Done()
	var port *nexus.RemotePort
	defer func() {
		if port != nil {
			port.Close()
		}
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	buf := make([]byte, control.MaxMessage+1)
	for {
		// No control buffer: descriptors an app sends are closed by the
		// kernel and the message flagged MSG_CTRUNC.
		k, _, flags, _, err := c.ReadMsgUnix(buf, nil)
		if err != nil || k == 0 || flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
			return // gone, or a message too long or carrying descriptors
		}
		req, err := control.DecodeRequest(buf[:k])
		if err != nil {
			return
		}
		var rep control.Reply
		switch req.Op {
		case control.OpOpen:
			if port != nil {
				return // one port per session
			}
			if err := control.CheckLayout(req.Layout); err != nil {
				rep = control.Failure(err)
				break
			}
			rp, err := s.n.OpenRemotePort(req.Name, nexus.PortOptions{Advisories: req.Advisories})
			if err != nil {
				rep = control.Failure(err)
				break
			}
			port = rp
			rep = control.Reply{OK: true, Name: rp.Name(), Addrs: rp.Addrs(), MTU: rp.MTU()}
			if !s.reply(c, rep) {
				return
			}
			c.SetWriteDeadline(time.Now().Add(replyTimeout))
			if err := rp.Send(c); err != nil {
				return
			}
			continue
		case control.OpRegister, control.OpTeardown:
			if port == nil {
				return // before open
			}
			key, _ := req.Key.PacketKey() // checked by DecodeRequest
			if req.Op == control.OpTeardown {
				if err := port.Teardown(key); err != nil {
					rep = control.Failure(err)
				} else {
					rep = control.Reply{OK: true}
				}
				break
			}
			fi, err := port.Register(key, req.Kind)
			if err != nil {
				rep = control.Failure(err)
				break
			}
			rep = control.Reply{OK: true, FlowID: fi.ID[:], Advisory: fi.Advisory}
		case control.OpClose:
			if port != nil {
				if err := port.Close(); err != nil {
					rep = control.Failure(err)
				} else {
					rep = control.Reply{OK: true}
				}
				port = nil
			} else {
				rep = control.Reply{OK: true}
			}
			s.reply(c, rep)
			return
		}
		if !s.reply(c, rep) {
			return
		}
	}
}

// reply sends rep; false if the app is gone or does not take it in time.
func (s *server) reply(c *net.UnixConn, rep control.Reply) bool {
	b, err := json.Marshal(rep)
	if err != nil || len(b) > control.MaxMessage {
		return false
	}
	c.SetWriteDeadline(time.Now().Add(replyTimeout))
	_, err = c.Write(b)
	return err == nil
}
