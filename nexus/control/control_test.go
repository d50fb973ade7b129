package control_test

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/control"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/nexus"
	server "github.com/skylane/skylane/nexus/control"
	"github.com/skylane/skylane/packet"
)

var addr4 = netip.MustParseAddr("198.18.0.1") // RFC 2544 benchmarking range

// TestMain fails the run if a test leaves goroutines behind: Serve must
// join its sessions, the nexus its waiters.
func TestMain(m *testing.M) {
	before := runtime.NumGoroutine()
	code := m.Run()
	// Fuzzing's own workers and coordinator goroutines are not ours.
	if f := flag.Lookup("test.fuzz"); code == 0 && (f == nil || f.Value.String() == "") {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if k := runtime.NumGoroutine(); k > before {
			fmt.Fprintf(os.Stderr, "leaked %d goroutines\n", k-before)
			code = 1
		}
	}
	os.Exit(code)
}

// serve starts a nexus on one end of a memif wire and serves its control
// socket. stop stops Serve and checks it returned nil; the cleanup calls
// it if the test did not, then closes the nexus.
func serve(t *testing.T) (n *nexus.Nexus, path string, stop func()) {
	t.Helper()
	n, path, stop, _ = servePeer(t)
	return n, path, stop
}

// servePeer is serve, also returning the wire's other end: frames written
// there reach the nexus.
func servePeer(t *testing.T) (n *nexus.Nexus, path string, stop func(), peer netif.Link) {
	t.Helper()
	return servePeerWith(t, nexus.Options{})
}

// servePeerWith is servePeer with the nexus's options o (its Link and
// Addrs are the test's).
func servePeerWith(t *testing.T, o nexus.Options) (n *nexus.Nexus, path string, stop func(), peer netif.Link) {
	t.Helper()
	la, lb, err := memif.NewPair(memif.Options{Name: "ctl"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lb.Close() })
	o.Link, o.Addrs = la, []netip.Addr{addr4}
	n, err = nexus.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	path = filepath.Join(t.TempDir(), "nexus.sock")
	ln, err := server.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- server.Serve(ctx, n, ln) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-served; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return n, path, stop, lb
}

func flows(t *testing.T, n *nexus.Nexus) (ports, flows int) {
	t.Helper()
	st, err := n.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return len(st.Ports), st.Flows
}

// TestSession: open, register, errors that unwrap to the flow package's
// and the nexus's, teardown, and a Close that leaves no port or flow.
func TestSession(t *testing.T) {
	n, path, _ := serve(t)
	s, err := control.Open(path, "app", control.OpenOptions{Advisories: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.MTU() != n.MTU() || len(s.Addrs()) != 1 || s.Addrs()[0] != addr4 || s.App() == nil {
		t.Fatalf("open: mtu %d addrs %v app %v", s.MTU(), s.Addrs(), s.App())
	}
	// TCP listener on 198.18.0.1:80.
	lis := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(addr4, 80), netip.AddrPort{}).Listener3()
	fi, err := s.Register(lis, flow.Listener3)
	if err != nil {
		t.Fatal(err)
	}
	if fi.ID == ([16]byte{}) {
		t.Error("register: zero flow ID")
	}
	if _, err := s.Register(lis, flow.Listener3); !errors.Is(err, flow.ErrPortInUse) {
		t.Errorf("register twice: %v, want flow.ErrPortInUse", err)
	}
	// 192.0.2.1 (TEST-NET-1) is not the nexus's.
	other := packet.MakeKey(packet.ProtoTCP, netip.MustParseAddrPort("192.0.2.1:80"), netip.AddrPort{}).Listener3()
	if _, err := s.Register(other, flow.Listener3); !errors.Is(err, flow.ErrAddressNotLocal) {
		t.Errorf("register foreign address: %v, want flow.ErrAddressNotLocal", err)
	}
	if p, f := flows(t, n); p != 1 || f != 1 {
		t.Errorf("%d ports, %d flows; want 1, 1", p, f)
	}
	if err := s.Teardown(lis); err != nil {
		t.Fatal(err)
	}
	if err := s.Teardown(lis); !errors.Is(err, nexus.ErrNoFlow) {
		t.Errorf("teardown twice: %v, want nexus.ErrNoFlow", err)
	}
	if _, err := s.Register(lis, flow.Listener3); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if p, f := flows(t, n); p != 0 || f != 0 {
		t.Errorf("after Close: %d ports, %d flows; want 0, 0", p, f)
	}
	if _, err := s.Register(lis, flow.Listener3); !errors.Is(err, control.ErrSessionClosed) {
		t.Errorf("register after Close: %v", err)
	}
	if err := s.Err(); !errors.Is(err, control.ErrSessionClosed) {
		t.Errorf("session error after Close: %v, want control.ErrSessionClosed", err)
	}
}

// TestBadSessions: requests out of order or malformed end their session;
// a good session beside them keeps working.
func TestBadSessions(t *testing.T) {
	n, path, _ := serve(t)
	good, err := control.Open(path, "good", control.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	key, _ := json.Marshal(control.Key{Local: make([]byte, 16), Remote: make([]byte, 16), LocalPort: 80, Version: 4, Proto: 6})
	for _, tc := range []struct{ name, msg string }{
		{"not JSON", "{garbage"},
		{"unknown op", `{"op":"format"}`},
		{"register before open", `{"op":"register","kind":2,"key":` + string(key) + `}`},
		{"trailing byte", `{"op":"open","name":"x"}` + "\x00"},
		{"bad name", `{"op":"open","name":"../../etc"}`},
		{"empty", ""},
	} {
		c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(tc.msg)); err != nil {
			t.Fatal(err)
		}
		if k, err := c.Read(make([]byte, 256)); k != 0 {
			t.Errorf("%s: got a %d-byte reply (%v), want the session closed", tc.name, k, err)
		}
		c.Close()
	}
	// A second open on one session ends it, and its first port with it.
	openTwice, _ := json.Marshal(control.Request{Op: control.OpOpen, Name: "twice", Layout: channel.LayoutVersion})
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write(openTwice)
	buf := make([]byte, 8192)
	if k, err := c.Read(buf); err != nil || k == 0 {
		t.Fatalf("open reply: %d %v", k, err)
	}
	if k, err := c.Read(buf); err != nil || k == 0 { // the channel (descriptors dropped: no control buffer)
		t.Fatalf("channel: %d %v", k, err)
	}
	c.Write(openTwice)
	if k, _ := c.Read(buf); k != 0 {
		t.Errorf("second open: got a %d-byte reply, want the session closed", k)
	}
	lis := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(addr4, 53), netip.AddrPort{}).Listener3()
	if _, err := good.Register(lis, flow.Listener3); err != nil {
		t.Fatalf("good session after bad ones: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if p, _ := flows(t, n); p == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the bad sessions' ports are still open")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestServeStops: cancelling Serve ends every session (their ports
// closed) and joins their goroutines (TestMain checks none is left); the
// apps see their channel closed.
func TestServeStops(t *testing.T) {
	n, path, stop := serve(t)
	var ss []*control.Session
	for range 3 {
		s, err := control.Open(path, "app", control.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		ss = append(ss, s)
	}
	stop()
	if p, _ := flows(t, n); p != 0 {
		t.Errorf("%d ports after Serve returned", p)
	}
	lis := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(addr4, 80), netip.AddrPort{}).Listener3()
	for _, s := range ss {
		if err := s.App().Err(); err == nil {
			t.Error("app's channel not closed after Serve returned")
		}
		// The app learns it from the socket, not by asking.
		select {
		case <-s.Gone():
		case <-time.After(5 * time.Second):
			t.Fatal("session not gone 5 s after Serve returned")
		}
		if err := s.Err(); !errors.Is(err, control.ErrNexusGone) {
			t.Errorf("session error %v, want control.ErrNexusGone", err)
		}
		if _, err := s.Register(lis, flow.Listener3); !errors.Is(err, control.ErrNexusGone) {
			t.Errorf("register after the nexus went: %v, want control.ErrNexusGone", err)
		}
	}
	if _, err := control.Open(path, "late", control.OpenOptions{}); err == nil {
		t.Error("open after Serve returned: no error")
	}
}

// TestLayoutRefused: an app that names another channel layout version at
// open, or none (built before the layout was named), is refused with a
// reply whose code unwraps to control.ErrLayout and that names both
// versions; no channel follows, and no port was opened.
func TestLayoutRefused(t *testing.T) {
	n, path, _ := serve(t)
	for _, layout := range []int{0, channel.LayoutVersion - 1, channel.LayoutVersion + 1} {
		c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		b, _ := json.Marshal(control.Request{Op: control.OpOpen, Name: "old", Layout: layout})
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, control.MaxMessage)
		k, err := c.Read(buf)
		if err != nil || k == 0 {
			t.Fatalf("layout %d: reply %d bytes, %v", layout, k, err)
		}
		var rep control.Reply
		if err := json.Unmarshal(buf[:k], &rep); err != nil {
			t.Fatal(err)
		}
		rerr := &control.RemoteError{Msg: rep.Error, Code: rep.Code}
		if rep.OK || !errors.Is(rerr, control.ErrLayout) || !strings.Contains(rep.Error, "rebuild") ||
			!strings.Contains(rep.Error, fmt.Sprint(channel.LayoutVersion)) {
			t.Errorf("layout %d: reply %+v, want a refusal naming the versions", layout, rep)
		}
		if p, _ := flows(t, n); p != 0 {
			t.Errorf("layout %d: %d ports open", layout, p)
		}
		c.Close()
	}
}
