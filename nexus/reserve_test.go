package nexus_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"testing"

	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/packet"
)

// kernelLedger stands in for the kernel's port namespace
// (nexus.Options.Reserve; drivers.Reserver is the real one, tested with
// the kernel in package drivers and e2e): it records which keys are
// reserved and refuses a key that is, or that the test marked as a kernel
// socket's.
type kernelLedger struct {
	mu     sync.Mutex
	held   map[packet.Key]bool
	kernel map[packet.Key]bool
}

func newLedger() *kernelLedger {
	return &kernelLedger{held: map[packet.Key]bool{}, kernel: map[packet.Key]bool{}}
}

func (l *kernelLedger) reserve(k packet.Key) (nexus.Reservation, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held[k] || l.kernel[k] {
		return nil, fmt.Errorf("bind %v: %w", k, flow.ErrKernelPort)
	}
	l.held[k] = true
	return &ledgerRes{l: l, k: k}, nil
}

func (l *kernelLedger) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.held)
}

type ledgerRes struct {
	l *kernelLedger
	k packet.Key
}

func (r *ledgerRes) Listener() (*os.File, error) {
	if r.k.Proto != packet.ProtoTCP {
		return nil, nil
	}
	return os.Open(os.DevNull) // any file: the test checks who gets one
}

func (r *ledgerRes) Close() error {
	r.l.mu.Lock()
	defer r.l.mu.Unlock()
	if !r.l.held[r.k] {
		return errors.New("closed twice")
	}
	delete(r.l.held, r.k)
	return nil
}

// TestReservations: listener flows, and only they, are reserved in the
// kernel's port namespace before Register returns; a refused reservation
// fails the registration (flow.ErrKernelPort) and leaves no flow; every
// way a flow goes (Teardown, TeardownBatch, Port.Close, the nexus's
// Close) gives its reservation back, once; HostListener hands a port only
// its own TCP listeners' sockets.
func TestReservations(t *testing.T) {
	l := newLedger()
	n, _ := newNexus(t, nexus.Options{ReapInterval: noTimer, Reserve: l.reserve})
	p, err := n.OpenPort("a")
	if err != nil {
		t.Fatal(err)
	}
	q, err := n.OpenPort("b")
	if err != nil {
		t.Fatal(err)
	}
	any4 := netip.IPv4Unspecified()
	l2 := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(any4, 8080), netip.AddrPort{})
	l3 := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(local, 5353), netip.AddrPort{})
	conn := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(local, 8080), netip.AddrPortFrom(peer, 40000))
	if _, err := p.Register(l2, flow.Listener2); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Register(l3, flow.Listener3); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Register(conn, flow.Connected); err != nil {
		t.Fatal(err)
	}
	if got := l.count(); got != 2 {
		t.Fatalf("%d reservations for two listener flows and a connection", got)
	}

	// HostListener: a file for p's TCP listener, none for its UDP one,
	// ErrNoFlow for q, which does not own it.
	if f, err := p.HostListener(l2); err != nil || f == nil {
		t.Errorf("HostListener(tcp listener): %v, %v", f, err)
	} else {
		f.Close()
	}
	if f, err := p.HostListener(l3); err != nil || f != nil {
		t.Errorf("HostListener(udp listener): %v, %v; want none", f, err)
	}
	if _, err := q.HostListener(l2); !errors.Is(err, nexus.ErrNoFlow) {
		t.Errorf("HostListener of another port's flow: %v, want ErrNoFlow", err)
	}

	// A port the kernel holds: refused, no flow left behind.
	k := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(local, 9090), netip.AddrPort{})
	l.mu.Lock()
	l.kernel[k] = true
	l.mu.Unlock()
	if _, err := q.Register(k, flow.Listener3); !errors.Is(err, flow.ErrKernelPort) {
		t.Errorf("Register of a kernel socket's port: %v, want ErrKernelPort", err)
	}
	if err := q.Teardown(k); !errors.Is(err, nexus.ErrNoFlow) {
		t.Errorf("the refused flow is registered: Teardown %v", err)
	}

	if err := p.Teardown(l3); err != nil || l.count() != 1 {
		t.Errorf("Teardown: %v, %d reservations left, want 1", err, l.count())
	}
	if errs := p.TeardownBatch([]packet.Key{l2, conn}); errs[0] != nil || errs[1] != nil || l.count() != 0 {
		t.Errorf("TeardownBatch: %v, %d reservations left", errs, l.count())
	}
	// The ports are free again, for anyone.
	if _, err := q.Register(l2, flow.Listener2); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil || l.count() != 0 {
		t.Errorf("Port.Close: %v, %d reservations left", err, l.count())
	}
	if _, err := p.Register(l2, flow.Listener2); err != nil || l.count() != 1 {
		t.Fatalf("Register again: %v, %d reservations", err, l.count())
	}
	if err := n.Close(); err != nil || l.count() != 0 {
		t.Errorf("nexus Close: %v, %d reservations left", err, l.count())
	}
}
