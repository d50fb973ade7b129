package control_test

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/skylane/skylane/control"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/internal/shm"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/nexus"
	server "github.com/skylane/skylane/nexus/control"
	"github.com/skylane/skylane/packet"
)

// TestFreezeThaw: a frozen server answers nothing (a request in the
// socket and a new connection wait) and exports its session with what it
// knows; after Thaw both are served. A second freeze ends in Abandon:
// Serve returns, the session's port and flows stay (the nexus abandons
// them), and the socket file stays.
func TestFreezeThaw(t *testing.T) {
	la, lb, err := memif.NewPair(memif.Options{Name: "frz"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lb.Close() })
	n, err := nexus.New(nexus.Options{Link: la, Addrs: []netip.Addr{addr4}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	path := filepath.Join(t.TempDir(), "nexus.sock")
	ln, err := server.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := server.NewServer(n, server.ServerOptions{})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), ln) }()

	s, err := control.Open(path, "app", control.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	lis := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(addr4, 80), netip.AddrPort{}).Listener3()
	if _, err := s.Register(lis, flow.Listener3); err != nil {
		t.Fatal(err)
	}

	h, conns, lnFD, err := srv.Freeze(ln)
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Sessions) != 1 || len(conns) != 1 || lnFD < 0 {
		t.Fatalf("froze %d sessions, %d connections, listener %d", len(h.Sessions), len(conns), lnFD)
	}
	if sh := h.Sessions[0]; sh.Name != "app" || sh.Port == "" || len(sh.Flows) != 1 || sh.Flows[0].Key != lis {
		t.Errorf("session exported as %+v", sh)
	}
	for _, fd := range append(conns, lnFD) {
		shm.CloseFD(fd)
	}
	if _, _, _, err := srv.Freeze(ln); err == nil {
		t.Error("a second Freeze while frozen succeeded")
	}
	other := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(addr4, 81), netip.AddrPort{}).Listener3()
	registered := make(chan error, 1)
	go func() { _, err := s.Register(other, flow.Listener3); registered <- err }()
	opened := make(chan error, 1)
	go func() {
		s2, err := control.Open(path, "late", control.OpenOptions{})
		if err == nil {
			s2.Close()
		}
		opened <- err
	}()
	select {
	case err := <-registered:
		t.Fatalf("a frozen session answered: %v", err)
	case err := <-opened:
		t.Fatalf("a frozen server accepted: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	srv.Thaw(ln)
	if err := <-registered; err != nil {
		t.Errorf("register after thaw: %v", err)
	}
	if err := <-opened; err != nil {
		t.Errorf("open after thaw: %v", err)
	}

	_, conns, lnFD, err = srv.Freeze(ln)
	if err != nil {
		t.Fatal(err)
	}
	// The duplicates are what a new nexus would serve on.
	defer func() {
		for _, fd := range append(conns, lnFD) {
			shm.CloseFD(fd)
		}
	}()
	srv.Abandon(ln)
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve after Abandon: %v", err)
		}
	case <-time.After(opWait):
		t.Fatal("Serve still runs after Abandon")
	}
	if p, f := flows(t, n); p != 1 || f != 2 {
		t.Errorf("after Abandon: %d ports, %d flows; want the session's 1 and 2 kept", p, f)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("the socket file went with Abandon: %v", err)
	}
}

const opWait = 5 * time.Second
