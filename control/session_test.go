package control_test

import (
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/control"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/pool"
)

// fakeNexus answers one session's open on a socket at path with a real
// channel, then hands the connection to the test. It speaks the protocol
// by hand, so a test can make it misbehave.
func fakeNexus(t *testing.T) (path string, conns <-chan *net.UnixConn) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "nexus.sock")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	ch, err := channel.New(channel.Options{Name: "fake", Pool: pool.Options{MaxSegments: 2}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); ch.Close() })
	out := make(chan *net.UnixConn, 1)
	go func() { // one session; ends with the listener
		c, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		t.Cleanup(func() { c.Close() })
		buf := make([]byte, control.MaxMessage)
		k, err := c.Read(buf)
		if err != nil {
			return
		}
		if _, err := control.DecodeRequest(buf[:k]); err != nil {
			return
		}
		b, _ := json.Marshal(control.Reply{OK: true, Name: "fake", Addrs: []netip.Addr{netip.MustParseAddr("198.18.0.1")}, MTU: 1500, Batch: true})
		c.Write(b)
		ch.Send(c)
		out <- c
	}()
	return path, out
}

func openFake(t *testing.T) (*control.Session, *net.UnixConn) {
	t.Helper()
	path, conns := fakeNexus(t)
	s, err := control.Open(path, "app", control.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	select {
	case c := <-conns:
		return s, c
	case <-time.After(10 * time.Second):
		t.Fatal("fake nexus did not open")
		return nil, nil
	}
}

// waitGone waits for the session to end and returns its error.
func waitGone(t *testing.T, s *control.Session) error {
	t.Helper()
	select {
	case <-s.Gone():
		return s.Err()
	case <-time.After(5 * time.Second):
		t.Fatal("session not gone 5 s after its nexus ended it")
		return nil
	}
}

var lis = packet.MakeKey(packet.ProtoTCP, netip.MustParseAddrPort("198.18.0.1:80"), netip.AddrPort{}).Listener3()

// TestSessionEnds: the app's half learns of the end of its session from
// the socket, whatever the nexus does: it hangs up (EOF), says goodbye
// with a reason (a reply with ErrNexusGone's code answering nothing), or
// sends a reply nobody asked for (a violation, which also hangs up on
// it). Each time Err wraps ErrNexusGone and names the socket, a request
// fails with it at once, and Close releases the rest.
func TestSessionEnds(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(c *net.UnixConn)
		want string
	}{
		{"hang up", func(c *net.UnixConn) { c.Close() }, "ended the session"},
		{"goodbye", func(c *net.UnixConn) {
			b, _ := json.Marshal(control.Reply{Error: "interface eth9 deleted", Code: control.CodeOf(control.ErrNexusGone)})
			c.Write(b)
			c.Close()
		}, "interface eth9 deleted"},
		{"unasked replies", func(c *net.UnixConn) {
			b, _ := json.Marshal(control.Reply{OK: true})
			c.Write(b) // takes the one slot
			c.Write(b) // one too many
		}, "a reply nobody asked for"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, c := openFake(t)
			if s.Err() != nil {
				t.Fatalf("fresh session: %v", s.Err())
			}
			tc.end(c)
			err := waitGone(t, s)
			if !errors.Is(err, control.ErrNexusGone) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "nexus.sock") {
				t.Errorf("session error %v, want ErrNexusGone saying %q and naming the socket", err, tc.want)
			}
			start := time.Now()
			if _, err := s.Register(lis, flow.Listener3); !errors.Is(err, control.ErrNexusGone) || time.Since(start) > time.Second {
				t.Errorf("register after the end: %v after %v", err, time.Since(start))
			}
			if err := s.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
			if err := s.App().Err(); err == nil {
				t.Error("channel still attached after Close")
			}
		})
	}
}

// TestSessionReply: a request gets the reply meant for it from the reader,
// a refusal unwraps to its sentinel error, and a goodbye while a request
// waits answers it with ErrNexusGone.
func TestSessionReply(t *testing.T) {
	s, c := openFake(t)
	buf := make([]byte, control.MaxMessage)
	answer := func(rep control.Reply) {
		k, err := c.Read(buf)
		if err != nil {
			t.Error(err)
			return
		}
		if _, err := control.DecodeRequest(buf[:k]); err != nil {
			t.Error(err)
		}
		b, _ := json.Marshal(rep)
		c.Write(b)
	}
	go answer(control.Reply{OK: true, FlowID: make([]byte, 16), Advisory: 7})
	fi, err := s.Register(lis, flow.Listener3)
	if err != nil || fi.Advisory != 7 {
		t.Fatalf("register: %+v, %v", fi, err)
	}
	go answer(control.Reply{Error: "port 80 is not yours", Code: control.CodeOf(control.ErrNotPermitted)})
	if _, err := s.Register(lis, flow.Listener3); !errors.Is(err, control.ErrNotPermitted) || !strings.Contains(err.Error(), "not yours") {
		t.Fatalf("refused register: %v, want ErrNotPermitted with the nexus's text", err)
	}
	go answer(control.Reply{Error: "stopping", Code: control.CodeOf(control.ErrNexusGone)})
	if err := s.Teardown(lis); !errors.Is(err, control.ErrNexusGone) || !strings.Contains(err.Error(), "stopping") {
		t.Fatalf("teardown answered by a goodbye: %v", err)
	}
}

// FuzzSessionReply: whatever a nexus answers a register with, the app's
// half returns a flow or an error, never panics, and a session that ended
// says ErrNexusGone.
func FuzzSessionReply(f *testing.F) {
	f.Add([]byte(`{"ok":true,"flow_id":"AAAAAAAAAAAAAAAAAAAAAA==","advisory":3}`))
	f.Add([]byte(`{"ok":true,"flow_id":"AAAA"}`))
	f.Add([]byte(`{"error":"no","code":"port-in-use"}`))
	f.Add([]byte(`{"error":"bye","code":"nexus-gone"}`))
	f.Add([]byte(`{"ok":tru`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, msg []byte) {
		s, c := openFake(t)
		go func() {
			buf := make([]byte, control.MaxMessage)
			if _, err := c.Read(buf); err == nil {
				c.Write(msg) // an empty write ends the session: a zero-length record reads as EOF
			}
			c.Close() // answered, then gone: the reply still counts
		}()
		fi, err := s.Register(lis, flow.Listener3)
		if err == nil {
			var rep control.Reply
			if json.Unmarshal(msg, &rep) != nil || !rep.OK || len(rep.FlowID) != len(fi.ID) {
				t.Fatalf("register accepted %q", msg)
			}
			return
		}
		if s.Err() != nil && !errors.Is(s.Err(), control.ErrNexusGone) {
			t.Fatalf("session ended with %v", s.Err())
		}
	})
}

// FuzzSessionBatchReply: whatever a nexus answers to a batch request, the
// app's half never panics, and a key counts as registered only if the
// reply is OK and carries, for that key, a flow ID of the right size and
// no error.
func FuzzSessionBatchReply(f *testing.F) {
	f.Add([]byte(`{"ok":true,"flows":[{"id":"AAAAAAAAAAAAAAAAAAAAAA==","adv":3},{"error":"full","code":"too-many-flows"},{"id":"AQAAAAAAAAAAAAAAAAAAAA=="}]}`))
	f.Add([]byte(`{"ok":true,"flows":[{"id":"AAAA"},{},{}]}`))
	f.Add([]byte(`{"ok":true,"flows":[]}`))
	f.Add([]byte(`{"ok":true,"flows":[{"id":"AAAAAAAAAAAAAAAAAAAAAA=="},{"id":"AAAAAAAAAAAAAAAAAAAAAA=="},{"id":"AAAAAAAAAAAAAAAAAAAAAA=="},{}]}`))
	f.Add([]byte(`{"error":"no","code":"not-permitted"}`))
	f.Add([]byte(`{"ok":true,"flows":null}`))
	f.Fuzz(func(t *testing.T, msg []byte) {
		s, c := openFake(t)
		go func() {
			buf := make([]byte, control.MaxMessage)
			if _, err := c.Read(buf); err == nil {
				c.Write(msg)
			}
			c.Close()
		}()
		keys := []packet.Key{lis, lis, lis}
		keys[1].LocalPort, keys[2].LocalPort = 81, 82
		fis, errs := s.RegisterBatch(keys, flow.Listener3)
		if len(fis) != len(keys) || len(errs) != len(keys) {
			t.Fatalf("%d outcomes for %d keys", len(errs), len(keys))
		}
		var rep control.Reply
		valid := json.Unmarshal(msg, &rep) == nil && rep.OK && len(rep.Flows) == len(keys)
		for i, err := range errs {
			if err != nil {
				continue
			}
			if !valid || len(rep.Flows[i].FlowID) != len(fis[i].ID) || rep.Flows[i].Error != "" || rep.Flows[i].Code != "" {
				t.Fatalf("key %d registered from %q", i, msg)
			}
		}
		if s.Err() != nil && !errors.Is(s.Err(), control.ErrNexusGone) {
			t.Fatalf("session ended with %v", s.Err())
		}
	})
}
