package control_test

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/skylane/skylane/control"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/packet"
)

// loopbackRes is a reservation whose host listener is a real kernel
// listener on loopback (the kernel's port namespace itself is
// drivers.Reserver's, tested as root): what matters here is that its
// descriptor crosses the control socket.
type loopbackRes struct{ ln *net.TCPListener }

func (r loopbackRes) Listener() (*os.File, error) { return r.ln.File() }
func (r loopbackRes) Close() error                { return r.ln.Close() }

// TestHostListener: an app asks for the host listener of its TCP listener
// flow and gets the nexus's socket over the control socket (SCM_RIGHTS):
// it accepts a connection made to it. A UDP listener has none; a flow the
// app does not own is refused (ErrNoFlow) and the session goes on.
func TestHostListener(t *testing.T) {
	reserve := func(k packet.Key) (nexus.Reservation, error) {
		if k.Proto != packet.ProtoTCP {
			return nopRes{}, nil
		}
		ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return nil, err
		}
		return loopbackRes{ln}, nil
	}
	_, path, _, _ := servePeerWith(t, nexus.Options{Reserve: reserve})
	s, err := control.Open(path, "app", control.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tcpKey := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(addr4, 8080), netip.AddrPort{})
	udpKey := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(addr4, 5353), netip.AddrPort{})
	for _, k := range []packet.Key{tcpKey, udpKey} {
		if _, err := s.Register(k, flow.Listener3); err != nil {
			t.Fatal(err)
		}
	}
	f, err := s.HostListener(tcpKey)
	if err != nil || f == nil {
		t.Fatalf("HostListener(tcp): %v, %v", f, err)
	}
	hl, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	// The address the socket that crossed the control socket is bound to:
	// the nexus's reservation, not a copy the test kept.
	c, err := net.DialTimeout("tcp", hl.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hl.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	ac, err := hl.Accept()
	if err != nil {
		t.Fatalf("accept on the host listener the nexus sent: %v", err)
	}
	ac.Close()

	if f, err := s.HostListener(udpKey); err != nil || f != nil {
		t.Errorf("HostListener(udp): %v, %v; want none", f, err)
	}
	other := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(addr4, 9999), netip.AddrPort{})
	if _, err := s.HostListener(other); !errors.Is(err, nexus.ErrNoFlow) {
		t.Errorf("HostListener of a flow the app does not own: %v, want ErrNoFlow", err)
	}
	// The session serves on.
	if err := s.Teardown(udpKey); err != nil {
		t.Errorf("Teardown after the refusal: %v", err)
	}
}

type nopRes struct{}

func (nopRes) Listener() (*os.File, error) { return nil, nil }
func (nopRes) Close() error                { return nil }
