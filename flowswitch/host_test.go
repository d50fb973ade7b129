package flowswitch_test

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
)

// hostRig is a rig whose switch also has a host port: a memif wire whose
// other end (kernel) plays the kernel's stack.
func hostRig(t *testing.T) (*rig, netif.Link) {
	t.Helper()
	h, kernel, err := memif.NewPair(memif.Options{Name: "host", QueueLen: 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return newRig(t, flowswitch.Options{HostLink: h}, channel.Options{}), kernel
}

// readAll reads every frame waiting on l.
func readAll(t *testing.T, l netif.Link) [][]byte {
	t.Helper()
	var out [][]byte
	bufs := make([][]byte, 64)
	for i := range bufs {
		bufs[i] = make([]byte, netif.MaxFrameLen(l.MTU(), l.LinkType()))
	}
	sizes := make([]int, len(bufs))
	for {
		n, err := l.Read(bufs, sizes)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return out
		}
		for i := range n {
			out = append(out, bytes.Clone(bufs[i][:sizes[i]]))
		}
	}
}

// Frames of no flow, ARP included, reach the host link unchanged and are
// counted; a flow's frames still reach its channel; malformed frames are
// dropped by reason, not handed to the kernel.
func TestHostPortReceive(t *testing.T) {
	r, kernel := hostRig(t)
	r.register(t, 0, 1000, 53)
	noFlow := udpFrame(t, 1000, 9999, "kernel's", 0)
	ping := (&packettest.Frame{Src: netip.AddrPortFrom(remoteIP, 7), Dst: netip.AddrPortFrom(localIP, 0),
		Proto: packet.ProtoICMP}).Bytes()
	arp := make([]byte, 14+28)
	copy(arp, noFlow[:12])
	arp[12], arp[13] = 0x08, 0x06
	copy(arp[14:], []byte{0, 1, 8, 0, 6, 4, 0, 1})
	bad := bytes.Clone(noFlow[:14+10]) // IPv4 header cut short
	r.write(t, noFlow, udpFrame(t, 1000, 53, "mine", 0), arp, bad, ping)
	r.rxOnce(t, 5)
	got := readAll(t, kernel)
	if len(got) != 3 || !bytes.Equal(got[0], noFlow) || !bytes.Equal(got[1], arp) || !bytes.Equal(got[2], ping) {
		t.Fatalf("kernel got %d frames, want the no-flow UDP frame, the ARP frame and the ping unchanged", len(got))
	}
	if tags := r.drain(t, 0); !equal(tags, []string{"mine"}) {
		t.Errorf("channel got %v", tags)
	}
	st := r.sw.Stats()
	if st.HostDelivered != 3 || st.NoFlow != 0 || st.ParseDrops[packet.ReasonTruncatedIPv4] != 1 || st.Delivered != 1 {
		t.Errorf("stats %+v", st)
	}
}

// Frames the kernel sends on the host link reach the device unchanged and
// unchecked (the kernel is trusted), and are counted.
func TestHostPortTransmit(t *testing.T) {
	r, kernel := hostRig(t)
	// Not a flow of any app, and a source port no app holds: the checks of
	// the transmit path would refuse it; the host port does not check.
	out := (&packettest.Frame{Src: netip.AddrPortFrom(localIP, 22), Dst: netip.AddrPortFrom(remoteIP, 50000),
		Proto: packet.ProtoTCP, Flags: packet.TCPSyn | packet.TCPAck, SrcMAC: [6]byte{2, 0, 0, 0, 0, 9}}).Bytes()
	if n, err := kernel.Write([][]byte{out, out}); n != 2 || err != nil {
		t.Fatalf("kernel write %d, %v", n, err)
	}
	if n, err := r.sw.HostOnce(); n != 2 || err != nil {
		t.Fatalf("HostOnce = %d, %v", n, err)
	}
	fr := r.wire(t)
	if len(fr) != 2 || !bytes.Equal(fr[0], out) || !bytes.Equal(fr[1], out) {
		t.Fatalf("device got %d frames, want the kernel's 2 unchanged", len(fr))
	}
	if st := r.sw.Stats(); st.HostTx != 2 || st.TxPackets != 0 || st.TxDrops != (flowswitch.TxDrops{}) {
		t.Errorf("stats %+v", st)
	}
	if n, err := r.sw.HostOnce(); n != 0 || err != nil {
		t.Errorf("idle HostOnce = %d, %v", n, err)
	}
}

// A full host link drops the excess, counted as HostDrops; a closed one is
// an error of RxOnce.
func TestHostPortFullAndClosed(t *testing.T) {
	h, kernel, err := memif.NewPair(memif.Options{Name: "host", QueueLen: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer kernel.Close()
	r := newRig(t, flowswitch.Options{HostLink: h}, channel.Options{})
	nf := udpFrame(t, 1000, 9999, "x", 0)
	r.write(t, nf, nf, nf)
	r.rxOnce(t, 3)
	if st := r.sw.Stats(); st.HostDelivered != 2 || st.HostDrops != 1 {
		t.Errorf("stats %+v", st)
	}
	h.Close()
	r.write(t, nf)
	if _, err := r.sw.RxOnce(); !errors.Is(err, netif.ErrClosed) {
		t.Errorf("RxOnce with a closed host link = %v, want ErrClosed", err)
	}
}

// The host link must frame and size frames as the device link does.
func TestHostLinkOptions(t *testing.T) {
	dev, peer, err := memif.NewPair(memif.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	defer peer.Close()
	for _, o := range []memif.Options{{LinkType: packet.RawIP}, {MTU: 9000}} {
		h, k, err := memif.NewPair(o)
		if err != nil {
			t.Fatal(err)
		}
		_, err = flowswitch.New(flowswitch.Options{Link: dev, HostLink: h, LocalAddrs: []netip.Addr{localIP}})
		if !errors.Is(err, flowswitch.ErrBadOptions) {
			t.Errorf("host link %+v: New = %v, want ErrBadOptions", o, err)
		}
		h.Close()
		k.Close()
	}
}

// Handing frames to the host link allocates nothing either.
func TestHostPortNoAllocs(t *testing.T) {
	r, kernel := hostRig(t)
	r.register(t, 0, 1000, 53)
	in := [][]byte{udpFrame(t, 1000, 9999, "k", 0), udpFrame(t, 1000, 53, "a", 0), udpFrame(t, 1001, 53, "k", 0)}
	bufs := make([][]byte, 8)
	for i := range bufs {
		bufs[i] = make([]byte, netif.MaxFrameLen(kernel.MTU(), kernel.LinkType()))
	}
	sizes := make([]int, len(bufs))
	cbufs := make([]channel.Buf, 8)
	step := func() {
		if n, err := r.peer.Write(in); n != len(in) || err != nil {
			t.Fatalf("peer write %d, %v", n, err)
		}
		if n, err := r.sw.RxOnce(); n != len(in) || err != nil {
			t.Fatalf("RxOnce = %d, %v", n, err)
		}
		if n, _ := kernel.Read(bufs, sizes); n != 2 {
			t.Fatalf("kernel read %d frames", n)
		}
		n, _ := r.apps[0].Receive(cbufs)
		r.apps[0].Free(cbufs[:n])
		r.chans[0].Sync()
	}
	for range 5 {
		step()
	}
	if a := testing.AllocsPerRun(100, step); a != 0 {
		t.Errorf("%v allocations per batch", a)
	}
}
