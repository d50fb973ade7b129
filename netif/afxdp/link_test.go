package afxdp_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/afxdp"
	"github.com/skylane/skylane/netif/steer"
	"github.com/skylane/skylane/packet"
)

var modes = []steer.XDPMode{steer.XDPGeneric, steer.XDPNative}

// TestReceiveAndCoexist: a registered 5-tuple reaches the link with its
// content intact, while the local kernel keeps every other flow: another
// port, the same port from another remote port, ARP and ICMP.
func TestReceiveAndCoexist(t *testing.T) {
	nettest.RequirePriv(t)
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			v := nettest.NewVeth(t, nettest.VethOptions{})
			l := openLink(t, v, afxdp.Options{Mode: mode})
			flow := packet.MakeKey(packet.ProtoUDP, ap(local4, 7000), ap(peer4, 5000))
			if err := l.SteerFlow(flow); err != nil {
				t.Fatal(err)
			}
			k7000 := udpIn(t, v.Local, ap(local4, 7000)) // same port, other remotes
			k7001 := udpIn(t, v.Local, ap(local4, 7001)) // another port
			p5000 := udpIn(t, v.Peer, ap(peer4, 5000))
			p5001 := udpIn(t, v.Peer, ap(peer4, 5001))

			// The first datagram makes the peer resolve 198.18.0.1: ARP
			// passes the XDP program and the local kernel answers.
			send(t, p5000, ap(local4, 7001), "kernel-prime")
			recvAll(t, k7001, map[string]bool{"kernel-prime": true})
			requirePeerNeighbour(t, v)

			const n = 100
			steered, toKernel7001, toKernel7000 := map[string]bool{}, map[string]bool{}, map[string]bool{}
			for i := range n {
				s, k, o := fmt.Sprintf("steered-%d", i), fmt.Sprintf("kernel-%d", i), fmt.Sprintf("other-remote-%d", i)
				send(t, p5000, ap(local4, 7000), s)
				send(t, p5000, ap(local4, 7001), k)
				send(t, p5001, ap(local4, 7000), o)
				steered[s], toKernel7001[k], toKernel7000[o] = true, true, true
			}
			readLink(t, l, steered, func(f udpFrame) error {
				if f.src != ap(peer4, 5000) || f.dst != ap(local4, 7000) || f.dstMAC.String() != v.LocalMAC.String() {
					return fmt.Errorf("want %v -> %v to %v", ap(peer4, 5000), ap(local4, 7000), v.LocalMAC)
				}
				return nil
			})
			recvAll(t, k7001, toKernel7001)
			recvAll(t, k7000, toKernel7000)
			peerPing(t, v, local4)

			c, err := l.Counters()
			if err != nil {
				t.Fatal(err)
			}
			if c.Hit < n {
				t.Errorf("XDP counters %+v: want at least %d hits", c, n)
			}
			s := l.Stats()
			if s.RxPackets < n || s.RxDrops != 0 {
				t.Errorf("stats %+v: want ≥ %d received, no drops", s, n)
			}
			// The kernel's 2n datagrams (and ARP, ICMP) were passed, not
			// dropped, and counted so: at least what the counters said a
			// moment before.
			if passed := c.Miss + c.Unparsed + c.HitNoSocket; s.KernelPassed < 2*n || s.KernelPassed < passed {
				t.Errorf("stats %+v: KernelPassed %d, want ≥ %d and ≥ the program's %d passes", s, s.KernelPassed, 2*n, passed)
			}
		})
	}
}

// requirePeerNeighbour checks the peer learnt the local MAC by ARP.
func requirePeerNeighbour(t *testing.T, v *nettest.Veth) {
	t.Helper()
	nl, err := v.Peer.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	ns, err := nl.NeighList(0, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		if n.IP.Equal(local4.AsSlice()) && n.HardwareAddr.String() == v.LocalMAC.String() {
			return
		}
	}
	t.Errorf("peer has no ARP entry %v -> %v: %v", local4, v.LocalMAC, ns)
}

// buildUDP builds an Ethernet/IPv4/UDP frame with checksums.
func buildUDP(t *testing.T, srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, payload string) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Flags: layers.IPv4DontFragment, Protocol: layers.IPProtocolUDP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	u := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	u.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}, ip, u, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestWrite: frames written to the link reach a kernel socket in the peer.
func TestWrite(t *testing.T) {
	nettest.RequirePriv(t)
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			v := nettest.NewVeth(t, nettest.VethOptions{})
			l := openLink(t, v, afxdp.Options{Mode: mode})
			p9000 := udpIn(t, v.Peer, ap(peer4, 9000))
			const batches, per = 8, 40 // more than a sendto moves at once
			for b := range batches {
				// One batch at a time: the peer socket's receive buffer
				// (212 KiB) holds about 256 small datagrams.
				want := map[string]bool{}
				frames := make([][]byte, per)
				for i := range frames {
					p := fmt.Sprintf("written-%d-%d", b, i)
					frames[i] = buildUDP(t, v.LocalMAC, v.PeerMAC, ap(local4, 7000), ap(peer4, 9000), p)
					want[p] = true
				}
				n, err := l.Write(frames)
				if err != nil || n != per {
					t.Fatalf("write: %d, %v; want %d, nil", n, err, per)
				}
				recvAll(t, p9000, want)
			}
			if s := l.Stats(); s.TxPackets != batches*per || s.TxDrops != 0 {
				t.Errorf("stats %+v: want %d sent, no drops", s, batches*per)
			}
			tooBig := make([]byte, netif.MaxFrameLen(l.MTU(), l.LinkType())+1)
			if n, err := l.Write([][]byte{tooBig}); n != 0 || !errors.Is(err, netif.ErrFrameTooLarge) {
				t.Errorf("write of %d bytes: %d, %v; want ErrFrameTooLarge", len(tooBig), n, err)
			}
		})
	}
}

// TestListenerSteering: listener3 and listener2 keys steer every remote;
// removing them gives the port back to the kernel.
func TestListenerSteering(t *testing.T) {
	nettest.RequirePriv(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	l := openLink(t, v, afxdp.Options{})
	l3 := packet.MakeKey(packet.ProtoUDP, ap(local4, 7000), netip.AddrPort{})
	l2 := packet.MakeKey(packet.ProtoUDP, ap(netip.IPv4Unspecified(), 7002), netip.AddrPort{})
	for _, k := range []packet.Key{l3, l2} {
		if err := l.SteerFlow(k); err != nil {
			t.Fatal(err)
		}
	}
	k7000 := udpIn(t, v.Local, ap(local4, 7000))
	k7002 := udpIn(t, v.Local, ap(netip.IPv4Unspecified(), 7002))
	p5000 := udpIn(t, v.Peer, ap(peer4, 5000))
	p5001 := udpIn(t, v.Peer, ap(peer4, 5001))

	send(t, p5000, ap(local4, 7000), "l3-a")
	send(t, p5001, ap(local4, 7000), "l3-b")
	send(t, p5000, ap(local4, 7002), "l2-a")
	send(t, p5001, ap(local4, 7002), "l2-b")
	readLink(t, l, map[string]bool{"l3-a": true, "l3-b": true, "l2-a": true, "l2-b": true}, func(udpFrame) error { return nil })

	if err := l.UnsteerFlow(l3); err != nil {
		t.Fatal(err)
	}
	send(t, p5000, ap(local4, 7000), "kernel-7000")
	recvAll(t, k7000, map[string]bool{"kernel-7000": true})
	send(t, p5000, ap(local4, 7002), "l2-still")
	readLink(t, l, map[string]bool{"l2-still": true}, func(udpFrame) error { return nil })

	if err := l.UnsteerFlow(l2); err != nil {
		t.Fatal(err)
	}
	send(t, p5001, ap(local4, 7002), "kernel-7002")
	recvAll(t, k7002, map[string]bool{"kernel-7002": true})

	if err := l.SteerFlow(packet.MakeKey(packet.ProtoICMP, ap(local4, 1), netip.AddrPort{})); !errors.Is(err, netif.ErrNotSteerable) {
		t.Errorf("steering ICMP: %v, want ErrUnsupported", err)
	}
}

// TestCloseUnblocksWait races Close against a blocked Wait and a writer.
func TestCloseUnblocksWait(t *testing.T) {
	nettest.RequirePriv(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	fds := nettest.OpenFDs(t)
	l := openLink(t, v, afxdp.Options{})
	waitErr := make(chan error, 1)
	go func() { waitErr <- l.Wait(-1) }()
	writeErr := make(chan error, 1)
	f := buildUDP(t, v.LocalMAC, v.PeerMAC, ap(local4, 7000), ap(peer4, 9), "x")
	go func() {
		for {
			if _, err := l.Write([][]byte{f, f, f, f}); err != nil {
				writeErr <- err
				return
			}
		}
	}()
	// Whether the goroutine is already blocked in Wait or not yet, Close
	// must make it return ErrClosed.
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []chan error{waitErr, writeErr} {
		select {
		case err := <-c:
			if !errors.Is(err, netif.ErrClosed) {
				t.Errorf("after Close: %v, want ErrClosed", err)
			}
		case <-time.After(waitLimit):
			t.Fatal("Close did not unblock Wait or Write")
		}
	}
	if _, err := l.Read(make([][]byte, 1), make([]int, 1)); !errors.Is(err, netif.ErrClosed) {
		t.Errorf("Read after Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := l.Counters(); !errors.Is(err, steer.ErrClosed) {
		t.Errorf("Counters after Close: %v", err)
	}
	if err := l.SteerFlow(packet.MakeKey(packet.ProtoUDP, ap(local4, 1), netip.AddrPort{})); !errors.Is(err, netif.ErrClosed) {
		t.Errorf("SteerFlow after Close: %v", err)
	}
	_ = l.XDPStats()
	requireNoXDP(t, v)
	if got := nettest.OpenFDs(t); got != fds {
		t.Errorf("%d fds open after Close, %d before Open", got, fds)
	}
}

// TestReopen closes a link and opens another on the same queue at once:
// the kernel releases the old socket's queue asynchronously, so the new
// bind may meet EBUSY and retry.
func TestReopen(t *testing.T) {
	nettest.RequirePriv(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	var retries uint64
	for range 3 {
		var l afxdp.Link
		if err := v.Local.Do(func() (err error) {
			l, err = afxdp.Open(afxdp.Options{Interface: v.LocalName})
			return err
		}); err != nil {
			t.Fatalf("reopen: %v", err)
		}
		retries += l.XDPStats().BindRetries
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d EBUSY retries over 3 reopens", retries)
	requireNoXDP(t, v)
}

// TestOpenErrors: bad options and environments fail with a clear error and
// leave nothing behind.
func TestOpenErrors(t *testing.T) {
	nettest.RequirePriv(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	fds := nettest.OpenFDs(t)
	open := func(o afxdp.Options) error {
		return v.Local.Do(func() error {
			l, err := afxdp.Open(o)
			if err == nil {
				l.Close()
			}
			return err
		})
	}
	for _, c := range []struct {
		name string
		o    afxdp.Options
		want string
	}{
		{"no interface", afxdp.Options{}, "Interface is required"},
		{"no such interface", afxdp.Options{Interface: "skl-nonexistent"}, "no interface"},
		{"bad ring", afxdp.Options{Interface: v.LocalName, RingSize: 100}, "power of two"},
		{"bad frame", afxdp.Options{Interface: v.LocalName, FrameSize: 1000}, "FrameSize"},
		{"zero-copy on veth", afxdp.Options{Interface: v.LocalName, RequireZeroCopy: true}, "zero-copy unavailable"},
	} {
		err := open(c.o)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.want)
		}
	}
	if err := open(afxdp.Options{Interface: v.LocalName, RequireZeroCopy: true}); !errors.Is(err, afxdp.ErrZeroCopy) {
		t.Errorf("required zero-copy: %v, want ErrZeroCopy", err)
	}
	// Asked, not required: copy mode, and the reason kept.
	l := openLink(t, v, afxdp.Options{ZeroCopy: true})
	if l.ZeroCopy() || !errors.Is(l.ZeroCopyError(), afxdp.ErrZeroCopy) {
		t.Errorf("ZeroCopy() = %v, ZeroCopyError() = %v; want copy mode and ErrZeroCopy", l.ZeroCopy(), l.ZeroCopyError())
	}
	t.Logf("fallback reason: %v", l.ZeroCopyError())
	// A second link on the same queue: the queue is taken.
	err := open(afxdp.Options{Interface: v.LocalName, BindTimeout: 100 * time.Millisecond})
	if err == nil {
		t.Error("second link on a bound queue opened")
	} else {
		t.Logf("second link: %v", err)
	}
	l.Close()
	requireNoXDP(t, v)
	if got := nettest.OpenFDs(t); got != fds {
		t.Errorf("%d fds open after the failed opens, %d before", got, fds)
	}
}

// TestCrashDetaches: a process holding a link is killed with SIGKILL; the
// device carries kernel traffic on the steered port again, and a new link
// attaches (retrying bind while the old socket's queue is released).
func TestCrashDetaches(t *testing.T) {
	nettest.RequirePriv(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := v.Local.Command(ctx, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+v.LocalName)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the test
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}
	killed := false
	defer func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("child did not get ready: %q, %v", line, err)
	}
	if !xdpAttached(t, v) {
		t.Fatal("child runs but no XDP program is attached")
	}
	k7000 := udpIn(t, v.Local, ap(local4, 7000))
	p5000 := udpIn(t, v.Peer, ap(peer4, 5000))

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	killed = true

	// The program goes with the child's last fd.
	deadline := time.Now().Add(waitLimit)
	for xdpAttached(t, v) {
		if time.Now().After(deadline) {
			t.Fatal("XDP program still attached after the process died")
		}
		time.Sleep(10 * time.Millisecond) // polling netlink, bounded by the deadline
	}
	// The kernel serves the port the child had steered: both ways.
	send(t, p5000, ap(local4, 7000), "after-crash")
	recvAll(t, k7000, map[string]bool{"after-crash": true})
	if _, err := k7000.WriteToUDPAddrPort([]byte("reply"), ap(peer4, 5000)); err != nil {
		t.Fatal(err)
	}
	recvAll(t, p5000, map[string]bool{"reply": true})

	// A new link attaches; its bind may meet EBUSY for a while.
	start := time.Now()
	l := openLink(t, v, afxdp.Options{})
	t.Logf("new link attached %v after the crash, after %d EBUSY retries", time.Since(start).Round(time.Millisecond), l.XDPStats().BindRetries)
	if err := l.SteerFlow(packet.MakeKey(packet.ProtoUDP, ap(local4, 7000), netip.AddrPort{})); err != nil {
		t.Fatal(err)
	}
	send(t, p5000, ap(local4, 7000), "to-new-link")
	readLink(t, l, map[string]bool{"to-new-link": true}, func(udpFrame) error { return nil })
}
