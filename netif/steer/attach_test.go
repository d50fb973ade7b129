package steer_test

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif/steer"
	"github.com/skylane/skylane/packet"
)

func TestFlowsMap(t *testing.T) {
	nettest.RequirePriv(t)
	f, err := steer.NewFlows(steer.Options{MaxFlows: 2})
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.AddrPortFrom
	k := func(port uint16) packet.Key {
		return packet.MakeKey(packet.ProtoTCP, ap(local4, port), netip.AddrPort{})
	}
	for _, p := range []uint16{1, 2, 2} { // the repeat is harmless
		if err := f.Add(k(p)); err != nil {
			t.Fatalf("add %d: %v", p, err)
		}
	}
	if err := f.Add(k(3)); !errors.Is(err, steer.ErrFull) {
		t.Errorf("add past MaxFlows: %v, want ErrFull", err)
	}
	if err := f.Remove(k(9)); err != nil {
		t.Errorf("remove of an absent key: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := f.Add(k(1)); !errors.Is(err, steer.ErrClosed) {
		t.Errorf("add after Close: %v", err)
	}
	if _, err := steer.LoadXDP(f); !errors.Is(err, steer.ErrClosed) {
		t.Errorf("LoadXDP over a closed map: %v", err)
	}
	if _, err := steer.NewFlows(steer.Options{MaxFlows: -1}); err == nil {
		t.Error("negative MaxFlows accepted")
	}
}

// TestTCDropsSteeredFlows: on a real veth, the TC ingress program keeps a
// registered flow from the kernel's stack, and Remove gives it back; Close
// leaves no program attached.
func TestTCDropsSteeredFlows(t *testing.T) {
	nettest.RequirePriv(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	flows, err := steer.NewFlows(steer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer flows.Close()
	var tc *steer.TC
	if err := v.Local.Do(func() (err error) {
		tc, err = steer.AttachTC(flows, v.LocalIndex)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer tc.Close()

	ap := netip.AddrPortFrom
	var kern, peer *net.UDPConn
	if err := v.Local.Do(func() (err error) {
		kern, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(ap(local4, 7000)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer kern.Close()
	if err := v.Peer.Do(func() (err error) {
		peer, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(ap(remote4, 5000)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	key := packet.MakeKey(packet.ProtoUDP, ap(local4, 7000), netip.AddrPort{})
	if err := flows.Add(key); err != nil {
		t.Fatal(err)
	}
	// Datagrams on a veth arrive in order: if "dropped" got through, the
	// kernel socket reads it before "kept".
	for _, p := range []string{"dropped", "dropped"} {
		if _, err := peer.WriteToUDPAddrPort([]byte(p), ap(local4, 7000)); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := tc.Counters()
		if err != nil {
			t.Fatal(err)
		}
		if c.Hit >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("TC counters %+v: the datagrams were not seen", c)
		}
		time.Sleep(time.Millisecond) // polling the counters, bounded by the deadline
	}
	if err := flows.Remove(key); err != nil {
		t.Fatal(err)
	}
	if _, err := peer.WriteToUDPAddrPort([]byte("kept"), ap(local4, 7000)); err != nil {
		t.Fatal(err)
	}
	kern.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, err := kern.Read(buf)
	if err != nil || string(buf[:n]) != "kept" {
		t.Fatalf("kernel socket read %q, %v; want \"kept\" (the steered datagrams dropped)", buf[:n], err)
	}

	query := func() int {
		var n int
		if err := v.Local.Do(func() error {
			r, err := link.QueryPrograms(link.QueryOptions{Target: v.LocalIndex, Attach: ebpf.AttachTCXIngress})
			if err == nil {
				n = len(r.Programs)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if got := query(); got != 1 {
		t.Errorf("%d TCX ingress programs attached, want 1", got)
	}
	if err := tc.Close(); err != nil {
		t.Fatal(err)
	}
	if got := query(); got != 0 {
		t.Errorf("%d TCX ingress programs attached after Close", got)
	}
}
