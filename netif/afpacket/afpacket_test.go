package afpacket_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/afpacket"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
)

// newLink makes a veth pair between two namespaces and an AF_PACKET Link on
// its local end, closed before the namespaces go.
func newLink(t testing.TB, vo nettest.VethOptions, opts afpacket.Options) (*nettest.Veth, *afpacket.Link) {
	t.Helper()
	nettest.RequirePriv(t)
	v := nettest.NewVeth(t, vo)
	opts.Interface = v.LocalName
	var l *afpacket.Link
	if err := v.Local.Do(func() (err error) {
		l, err = afpacket.New(opts)
		return err
	}); err != nil {
		t.Fatalf("open AF_PACKET link: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	if !vo.NoLocalAddr {
		waitLocalRoute(t, v.Local, v.LocalAddr6.Addr())
	}
	waitLocalRoute(t, v.Peer, v.PeerAddr6.Addr())
	return v, l
}

// waitLocalRoute waits until the kernel in ns routes a to itself. An IPv6
// address added without duplicate address detection (as nettest adds them)
// gets its local route only when the kernel's address worker runs, shortly
// after the address was added; a packet to it that arrives first is
// dropped, and a test sending one datagram would wait for it in vain.
func waitLocalRoute(t testing.TB, ns *nettest.NS, a netip.Addr) {
	t.Helper()
	nl, err := ns.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	for deadline := time.Now().Add(5 * time.Second); ; {
		rs, err := nl.RouteGet(a.AsSlice())
		if err == nil && len(rs) > 0 && rs[0].Type == unix.RTN_LOCAL {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v in %s: no local route after 5 s (%v)", a, ns.Name, err)
		}
		time.Sleep(time.Millisecond) // polled: the wait is a few ms at most
	}
}

// frameReader reads frames from a Link and hands them out one at a time.
// It checks that no frame the local side sent (source MAC: the local
// interface's) is ever read: PACKET_IGNORE_OUTGOING.
type frameReader struct {
	t      testing.TB
	l      *afpacket.Link
	bufs   [][]byte
	sizes  []int
	queued [][]byte
}

func newFrameReader(t testing.TB, l *afpacket.Link, bufLen int) *frameReader {
	r := &frameReader{t: t, l: l, bufs: make([][]byte, 16), sizes: make([]int, 16)}
	for i := range r.bufs {
		r.bufs[i] = make([]byte, bufLen)
	}
	return r
}

func (r *frameReader) until(match func([]byte) bool) []byte {
	r.t.Helper()
	f := r.within(10*time.Second, match)
	if f == nil {
		r.t.Fatalf("no matching frame within 10 s; stats %+v", r.l.Stats())
	}
	return f
}

// within is until with a time limit d, after which it returns nil.
func (r *frameReader) within(d time.Duration, match func([]byte) bool) []byte {
	r.t.Helper()
	deadline := time.Now().Add(d)
	for {
		for len(r.queued) > 0 {
			f := r.queued[0]
			r.queued = r.queued[1:]
			if bytes.Equal(f[6:12], r.l.HardwareAddr()) {
				r.t.Fatalf("read a frame this side sent: % x", f[:min(len(f), 64)])
			}
			if match(f) {
				return f
			}
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil
		}
		if err := r.l.Wait(min(left, 100*time.Millisecond)); err != nil {
			r.t.Fatalf("wait: %v", err)
		}
		n, err := r.l.Read(r.bufs, r.sizes)
		if err != nil {
			r.t.Fatalf("read: %v", err)
		}
		for i := range n {
			r.queued = append(r.queued, append([]byte(nil), r.bufs[i][:r.sizes[i]]...))
		}
	}
}

// udpTo matches UDP frames to port.
func udpTo(port uint16) func([]byte) bool {
	return func(b []byte) bool {
		var p packet.Parsed
		return packet.Parse(b, packet.Ethernet, &p) == nil && p.Proto == packet.ProtoUDP && p.DstPort == port
	}
}

// decode parses an Ethernet frame with gopacket and checks its checksums.
func decode(t testing.TB, b []byte) gopacket.Packet {
	t.Helper()
	return packettest.Decode(t, b, packet.Ethernet)
}

// udpFrame builds an Ethernet/IP/UDP frame with gopacket.
func udpFrame(t testing.TB, srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, payload []byte) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}
	udp := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	var ip gopacket.SerializableLayer
	if src.Addr().Is4() {
		x := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		_ = udp.SetNetworkLayerForChecksum(x)
		ip = x
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		x := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		_ = udp.SetNetworkLayerForChecksum(x)
		ip = x
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, udp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// listenUDP opens a kernel UDP socket in ns.
func listenUDP(t testing.TB, ns *nettest.NS, addr netip.Addr) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := ns.Do(func() error {
		pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
		c = pc
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestKernelToLink: a datagram from the peer's kernel socket arrives
// through Read, addressed to the local MAC, with a valid checksum (veth
// leaves it partial: the virtio header's NEEDS_CSUM is completed).
func TestKernelToLink(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "ipv4", true: "ipv6"}[v6], func(t *testing.T) {
			v, l := newLink(t, nettest.VethOptions{}, afpacket.Options{})
			local, peer := v.LocalAddr.Addr(), v.PeerAddr.Addr()
			if v6 {
				local, peer = v.LocalAddr6.Addr(), v.PeerAddr6.Addr()
			}
			c := listenUDP(t, v.Peer, peer)
			msg := []byte("from the peer's kernel")
			if _, err := c.WriteToUDPAddrPort(msg, netip.AddrPortFrom(local, 9999)); err != nil {
				t.Fatal(err)
			}
			f := newFrameReader(t, l, l.MaxSuperPacketLen()).until(udpTo(9999))
			p := decode(t, f)
			eth := p.LinkLayer().(*layers.Ethernet)
			if !bytes.Equal(eth.DstMAC, v.LocalMAC) || !bytes.Equal(eth.SrcMAC, v.PeerMAC) {
				t.Fatalf("MACs %v → %v", eth.SrcMAC, eth.DstMAC)
			}
			if got := p.TransportLayer().LayerPayload(); !bytes.Equal(got, msg) {
				t.Fatalf("payload %q", got)
			}
		})
	}
}

// TestLinkToKernel: frames built with gopacket and written reach a kernel
// UDP socket in the peer namespace.
func TestLinkToKernel(t *testing.T) {
	for _, mode := range []afpacket.TxMode{afpacket.TxRing, afpacket.TxSendmmsg} {
		for _, v6 := range []bool{false, true} {
			name := map[afpacket.TxMode]string{afpacket.TxRing: "ring", afpacket.TxSendmmsg: "sendmmsg"}[mode] +
				map[bool]string{false: "/ipv4", true: "/ipv6"}[v6]
			t.Run(name, func(t *testing.T) {
				v, l := newLink(t, nettest.VethOptions{}, afpacket.Options{TxMode: mode})
				local, peer := v.LocalAddr.Addr(), v.PeerAddr.Addr()
				if v6 {
					local, peer = v.LocalAddr6.Addr(), v.PeerAddr6.Addr()
				}
				c := listenUDP(t, v.Peer, peer)
				dst := netip.AddrPortFrom(peer, uint16(c.LocalAddr().(*net.UDPAddr).Port))
				msg := []byte("from user space")
				f := udpFrame(t, v.LocalMAC, v.PeerMAC, netip.AddrPortFrom(local, 5000), dst, msg)
				if n, err := l.Write([][]byte{f}); n != 1 || err != nil {
					t.Fatalf("write: %d, %v", n, err)
				}
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				buf := make([]byte, 64)
				n, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil || !bytes.Equal(buf[:n], msg) || from.Addr().Unmap() != local {
					t.Fatalf("peer got %q from %v: %v", buf[:n], from, err)
				}
			})
		}
	}
}

// TestBatch1000: one Write of 1000 frames; every datagram reaches the
// peer's kernel socket, and none comes back through Read
// (PACKET_IGNORE_OUTGOING: the frames are this socket's own).
func TestBatch1000(t *testing.T) {
	for _, mode := range []afpacket.TxMode{afpacket.TxRing, afpacket.TxSendmmsg} {
		t.Run(map[afpacket.TxMode]string{afpacket.TxRing: "ring", afpacket.TxSendmmsg: "sendmmsg"}[mode], func(t *testing.T) {
			v, l := newLink(t, nettest.VethOptions{}, afpacket.Options{TxMode: mode})
			c := listenUDP(t, v.Peer, v.PeerAddr.Addr())
			rc, _ := c.SyscallConn()
			_ = rc.Control(func(fd uintptr) {
				// 1000 datagrams of ~1 KiB truesize each exceed the default
				// 208 KiB receive buffer: make room so none is dropped there.
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
			})
			dst := netip.AddrPortFrom(v.PeerAddr.Addr(), uint16(c.LocalAddr().(*net.UDPAddr).Port))
			const count = 1000
			frames := make([][]byte, count)
			for i := range frames {
				var seq [4]byte
				binary.BigEndian.PutUint32(seq[:], uint32(i))
				frames[i] = udpFrame(t, v.LocalMAC, v.PeerMAC, netip.AddrPortFrom(v.LocalAddr.Addr(), 5001), dst, seq[:])
			}
			if n, err := l.Write(frames); n != count || err != nil {
				t.Fatalf("write: %d, %v (stats %+v)", n, err, l.Stats())
			}
			seen := make([]bool, count)
			buf := make([]byte, 64)
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			for range count {
				n, err := c.Read(buf)
				if err != nil {
					t.Fatalf("peer read: %v (stats %+v)", err, l.Stats())
				}
				i := binary.BigEndian.Uint32(buf[:n])
				if n != 4 || i >= count || seen[i] {
					t.Fatalf("bad or duplicate datagram % x", buf[:n])
				}
				seen[i] = true
			}
			if s := l.Stats(); s.TxPackets != count || s.TxDrops != 0 {
				t.Fatalf("stats %+v", s)
			}
			// Nothing of ours comes back: Read returns only peer frames.
			bufs, sizes := [][]byte{make([]byte, 2048)}, []int{0}
			for range 4 {
				_ = l.Wait(5 * time.Millisecond)
				n, err := l.Read(bufs, sizes)
				if err != nil {
					t.Fatal(err)
				}
				if n == 1 && bytes.Equal(bufs[0][6:12], v.LocalMAC) {
					t.Fatal("read back a frame this socket sent")
				}
			}
		})
	}
}

// TestCapture: tshark capturing on the peer end sees exactly the frames
// written, byte for byte and in order.
func TestCapture(t *testing.T) {
	nettest.RequireCommand(t, "tshark")
	v, l := newLink(t, nettest.VethOptions{}, afpacket.Options{})
	const count = 50
	file := filepath.Join(t.TempDir(), "peer.pcap")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Classic pcap (-F pcap) so the test reads it without a library; -P -l
	// also prints a line per frame as it is captured, which tells when the
	// capture is live and when the marker (port 6002) went by.
	cmd := v.Peer.Command(ctx, "tshark", "-i", v.PeerName, "-F", "pcap", "-w", file, "-P", "-l",
		"-f", "udp and (dst port 6001 or dst port 6002 or dst port 6003)")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = cmd.Wait() }()
	lines := make(chan string, 256)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	src := netip.AddrPortFrom(v.LocalAddr.Addr(), 6000)
	probe := udpFrame(t, v.LocalMAC, v.PeerMAC, src, netip.AddrPortFrom(v.PeerAddr.Addr(), 6003), []byte("probe"))
	// dumpcap's socket goes live some time after start: send probes (port
	// 6003) until one is captured, so no test frame can be missed.
	waitLine := func(what string, send []byte) {
		t.Helper()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			if send != nil {
				if _, err := l.Write([][]byte{send}); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case line, ok := <-lines:
				if !ok {
					t.Fatalf("tshark exited before %s was captured", what)
				}
				if strings.Contains(line, what) {
					return
				}
			case <-tick.C:
			case <-ctx.Done():
				t.Fatalf("tshark did not capture %s", what)
			}
		}
	}
	waitLine("6003", probe)
	frames := make([][]byte, count)
	for i := range frames {
		frames[i] = udpFrame(t, v.LocalMAC, v.PeerMAC, src, netip.AddrPortFrom(v.PeerAddr.Addr(), 6001),
			[]byte{byte(i), 's', 'k', 'y'})
	}
	marker := udpFrame(t, v.LocalMAC, v.PeerMAC, src, netip.AddrPortFrom(v.PeerAddr.Addr(), 6002), []byte("end"))
	if n, err := l.Write(frames); n != count || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	if n, err := l.Write([][]byte{marker}); n != 1 || err != nil {
		t.Fatalf("write marker: %d, %v", n, err)
	}
	waitLine("6002", nil)
	// SIGINT makes tshark flush the file and exit.
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	for range lines {
	}
	_ = cmd.Wait()
	var got [][]byte
	for _, f := range readPcap(t, file) {
		if udpTo(6001)(f) || udpTo(6002)(f) {
			got = append(got, f)
		}
	}
	if len(got) != count+1 {
		t.Fatalf("captured %d frames, wrote %d", len(got), count+1)
	}
	for i, f := range append(frames, marker) {
		if !bytes.Equal(got[i], f) {
			t.Fatalf("frame %d captured as % x, written as % x", i, got[i], f)
		}
	}
}

// readPcap reads the frames of a classic little-endian pcap file.
func readPcap(t *testing.T, name string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 24 || binary.LittleEndian.Uint32(b) != 0xa1b2c3d4 {
		t.Fatalf("not a little-endian microsecond pcap file (% x)", b[:min(len(b), 4)])
	}
	var frames [][]byte
	for off := 24; off < len(b); {
		if off+16 > len(b) {
			t.Fatal("truncated pcap record header")
		}
		incl := int(binary.LittleEndian.Uint32(b[off+8:]))
		if off+16+incl > len(b) {
			t.Fatal("truncated pcap record")
		}
		frames = append(frames, b[off+16:off+16+incl])
		off += 16 + incl
	}
	return frames
}

// TestSuperPacketsFromPeer: a kernel TCP client in the peer namespace
// writes bulk data to a kernel server on the local side; the veth carries
// it as TSO super packets, which the Link (a tap here) reads whole with
// large buffers and split into valid MTU-sized segments with small ones.
func TestSuperPacketsFromPeer(t *testing.T) {
	for _, split := range []bool{false, true} {
		t.Run(map[bool]string{false: "whole", true: "split"}[split], func(t *testing.T) {
			v, l := newLink(t, nettest.VethOptions{}, afpacket.Options{})
			var ln net.Listener
			if err := v.Local.Do(func() (err error) {
				ln, err = net.Listen("tcp4", net.JoinHostPort(v.LocalAddr.Addr().String(), "0"))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				buf := make([]byte, 1<<16)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
				}
			}()
			var conn net.Conn
			if err := v.Peer.Do(func() (err error) {
				conn, err = net.Dial("tcp4", ln.Addr().String())
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			go func() {
				_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
				_, _ = conn.Write(make([]byte, 1<<20))
			}()
			bufLen := l.MaxSuperPacketLen()
			if split {
				bufLen = netif.MaxFrameLen(l.MTU(), l.LinkType())
			}
			r := newFrameReader(t, l, bufLen)
			port := uint16(ln.Addr().(*net.TCPAddr).Port)
			big, total := 0, 0
			for total < 200000 {
				f := r.until(func(b []byte) bool {
					var p packet.Parsed
					return packet.Parse(b, packet.Ethernet, &p) == nil && p.Proto == packet.ProtoTCP &&
						p.DstPort == port && p.PayloadLen > 0
				})
				p := decode(t, f)
				total += len(p.TransportLayer().LayerPayload())
				if len(f) > netif.MaxFrameLen(l.MTU(), l.LinkType()) {
					big++
				}
			}
			if split && big > 0 {
				t.Fatalf("%d frames over the MTU with MTU-sized buffers", big)
			}
			if !split && big == 0 {
				t.Fatal("no super packet seen: the veth carried only MTU-sized frames?")
			}
		})
	}
}

// TestWaitAndClose: Close from another goroutine unblocks Wait, and
// everything returns ErrClosed afterwards.
func TestWaitAndClose(t *testing.T) {
	_, l := newLink(t, nettest.VethOptions{NoLocalAddr: true}, afpacket.Options{})
	done := make(chan error, 1)
	go func() {
		for {
			if err := l.Wait(-1); err != nil {
				done <- err
				return
			}
			bufs, sizes := [][]byte{make([]byte, 2048)}, []int{0}
			_, _ = l.Read(bufs, sizes) // drain the peer's IPv6 chatter
		}
	}()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, netif.ErrClosed) {
			t.Fatalf("Wait: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Wait")
	}
	if _, err := l.Read([][]byte{make([]byte, 2048)}, []int{0}); !errors.Is(err, netif.ErrClosed) {
		t.Fatalf("Read: %v", err)
	}
	if _, err := l.Write([][]byte{make([]byte, 60)}); !errors.Is(err, netif.ErrClosed) {
		t.Fatalf("Write: %v", err)
	}
	_ = l.Stats() // safe after Close
}

func TestErrors(t *testing.T) {
	for _, o := range []afpacket.Options{
		{}, {Interface: "x", BlockSize: 4096}, {Interface: "x", NumBlocks: 1},
		{Interface: "x", TxMode: 7}, {Interface: "x", TxFrames: -1},
	} {
		if _, err := afpacket.New(o); err == nil {
			t.Errorf("New(%+v) succeeded", o)
		}
	}
	nettest.RequirePriv(t)
	ns := nettest.NewNS(t)
	err := ns.Do(func() error {
		_, err := afpacket.New(afpacket.Options{Interface: "nosuchif0"})
		return err
	})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("no interface")) {
		t.Fatalf("missing interface: %v", err)
	}
	// Too large a frame stops the batch.
	_, l := newLink(t, nettest.VethOptions{}, afpacket.Options{})
	if n, err := l.Write([][]byte{make([]byte, 60), make([]byte, 2000)}); n != 1 || !errors.Is(err, netif.ErrFrameTooLarge) {
		t.Fatalf("oversized frame: %d, %v", n, err)
	}
}

// TestRxDropsAfterFlood: a flood into a ring nobody reads overflows it,
// and the kernel's drops (PACKET_STATISTICS) show in Stats.RxDrops, which
// the switch's snapshot exports as the link's own losses. The kernel's
// stack still got each frame: the Link is a netif.KernelTap.
func TestRxDropsAfterFlood(t *testing.T) {
	v, l := newLink(t, nettest.VethOptions{}, afpacket.Options{BlockSize: 128 << 10, NumBlocks: 2})
	if !l.KernelGetsCopies() {
		t.Error("an AF_PACKET link is a tap: KernelGetsCopies = false")
	}
	// 256 KiB of ring holds about 200 frames of 1200 bytes; send ten times
	// that, and read none.
	const n = 2000
	c := listenUDP(t, v.Peer, v.PeerAddr.Addr())
	payload := make([]byte, 1200)
	dst := netip.AddrPortFrom(v.LocalAddr.Addr(), 9999)
	for range n {
		if _, err := c.WriteToUDPAddrPort(payload, dst); err != nil {
			t.Fatal(err)
		}
	}
	// The frames cross the veth in the sender's softirq, but the last
	// ones may still be in flight: wait until the figure holds, bounded.
	var s netif.Stats
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if s = l.Stats(); s.RxDrops >= n/4 || time.Now().After(deadline) {
			break
		}
	}
	if s.RxDrops < n/4 || s.RxDrops > n {
		t.Errorf("stats %+v after %d frames into an unread ring: want between %d and %d receive drops", s, n, n/4, n)
	}
	t.Logf("%d of %d frames dropped by the full ring", s.RxDrops, n)
}
