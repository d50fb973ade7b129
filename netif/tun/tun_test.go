package tun_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/tun"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
)

// The kernel's side of the TUN device holds .1; the user-space side (this
// test, through the Link) uses .2, routed into the device.
var (
	kernel4 = netip.MustParsePrefix("198.18.1.1/24")
	user4   = netip.MustParseAddr("198.18.1.2")
	kernel6 = netip.MustParsePrefix("2001:2:1::1/64")
	user6   = netip.MustParseAddr("2001:2:1::2")
)

// newTUN makes a namespace with a TUN device in it, closed before the
// namespace is removed.
func newTUN(t *testing.T, opts tun.Options) (*nettest.NS, *tun.Link) {
	t.Helper()
	nettest.RequirePriv(t)
	ns := nettest.NewNS(t)
	opts.Addrs = []netip.Prefix{kernel4, kernel6}
	var l *tun.Link
	if err := ns.Do(func() (err error) {
		l, err = tun.New(opts)
		return err
	}); err != nil {
		t.Fatalf("create TUN: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return ns, l
}

// frameReader reads frames from a Link into buffers of one length and
// hands them out one at a time, keeping the rest of each batch.
type frameReader struct {
	l      netif.Link
	bufs   [][]byte
	sizes  []int
	queued [][]byte
}

func newFrameReader(l netif.Link, bufLen int) *frameReader {
	r := &frameReader{l: l, bufs: make([][]byte, 8), sizes: make([]int, 8)}
	for i := range r.bufs {
		r.bufs[i] = make([]byte, bufLen)
	}
	return r
}

// until returns the next frame match accepts (a copy), skipping others
// (IPv6 MLD reports and the like). It fails the test after 10 s.
func (r *frameReader) until(t *testing.T, match func([]byte) bool) []byte {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for len(r.queued) > 0 {
			f := r.queued[0]
			r.queued = r.queued[1:]
			if match(f) {
				return f
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no matching frame within 10 s; stats %+v", r.l.Stats())
		}
		if err := r.l.Wait(100 * time.Millisecond); err != nil {
			t.Fatalf("wait: %v", err)
		}
		n, err := r.l.Read(r.bufs, r.sizes)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		for i := range n {
			r.queued = append(r.queued, append([]byte(nil), r.bufs[i][:r.sizes[i]]...))
		}
	}
}

// readUntil reads one matching frame with a fresh frameReader: for tests
// that expect one frame, where dropping the rest of a batch does not matter.
func readUntil(t *testing.T, l netif.Link, bufLen int, match func([]byte) bool) []byte {
	t.Helper()
	return newFrameReader(l, bufLen).until(t, match)
}

// decode parses a raw IP frame with gopacket and checks its checksums.
func decode(t *testing.T, b []byte) gopacket.Packet {
	t.Helper()
	return packettest.Decode(t, b, packet.RawIP)
}

// build serializes an IP packet from user to kernel with gopacket.
func build(t *testing.T, src, dst netip.Addr, l4 gopacket.SerializableLayer, payload []byte) []byte {
	t.Helper()
	proto := layers.IPProtocolUDP
	if _, ok := l4.(*layers.TCP); ok {
		proto = layers.IPProtocolTCP
	}
	var ip gopacket.SerializableLayer
	var nl gopacket.NetworkLayer
	if src.Is4() {
		x := &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		ip, nl = x, x
	} else {
		x := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		ip, nl = x, x
	}
	switch x := l4.(type) {
	case *layers.TCP:
		_ = x.SetNetworkLayerForChecksum(nl)
	case *layers.UDP:
		_ = x.SetNetworkLayerForChecksum(nl)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		ip, l4, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestUDP: a kernel UDP socket's datagram, routed into the device, is read
// by the Link with a valid checksum (the kernel leaves it partial:
// NEEDS_CSUM), and a datagram the Link writes reaches a kernel socket.
func TestUDP(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "ipv4", true: "ipv6"}[v6], func(t *testing.T) {
			ns, l := newTUN(t, tun.Options{})
			kaddr, uaddr, network := kernel4.Addr(), user4, "udp4"
			if v6 {
				kaddr, uaddr, network = kernel6.Addr(), user6, "udp6"
			}
			var c *net.UDPConn
			if err := ns.Do(func() error {
				pc, err := net.ListenPacket(network, net.JoinHostPort(kaddr.String(), "0"))
				if err == nil {
					c = pc.(*net.UDPConn)
				}
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			kport := uint16(c.LocalAddr().(*net.UDPAddr).Port)

			// Kernel → Link.
			msg := []byte("datagram from the kernel")
			if _, err := c.WriteToUDPAddrPort(msg, netip.AddrPortFrom(uaddr, 9999)); err != nil {
				t.Fatalf("kernel send: %v", err)
			}
			frame := readUntil(t, l, l.MTU(), func(b []byte) bool {
				var p packet.Parsed
				return packet.Parse(b, packet.RawIP, &p) == nil && p.Proto == packet.ProtoUDP && p.DstPort == 9999
			})
			p := decode(t, frame)
			if got := p.TransportLayer().LayerPayload(); !bytes.Equal(got, msg) {
				t.Fatalf("payload %q, want %q", got, msg)
			}

			// Link → kernel.
			reply := []byte("datagram from user space")
			pkt := build(t, uaddr, kaddr, &layers.UDP{SrcPort: 9999, DstPort: layers.UDPPort(kport)}, reply)
			if n, err := l.Write([][]byte{pkt}); n != 1 || err != nil {
				t.Fatalf("write: %d, %v", n, err)
			}
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, 100)
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("kernel read: %v", err)
			}
			if !bytes.Equal(buf[:n], reply) || from.Addr().Unmap() != uaddr || from.Port() != 9999 {
				t.Fatalf("kernel got %q from %v", buf[:n], from)
			}
			if s := l.Stats(); s.TxPackets != 1 || s.RxPackets == 0 || s.TxDrops != 0 {
				t.Fatalf("stats %+v", s)
			}
		})
	}
}

// tcpPeer plays the user-space end of one TCP connection through the Link,
// just enough to open it and exchange data: no retransmission, no options
// but the MSS.
type tcpPeer struct {
	t        *testing.T
	l        *tun.Link
	src, dst netip.AddrPort
	seq, ack uint32 // next sequence number to send, next one expected
	bigBuf   int    // buffer length for reads
}

func (p *tcpPeer) segment(set func(*layers.TCP), payload []byte) []byte {
	tcp := &layers.TCP{SrcPort: layers.TCPPort(p.src.Port()), DstPort: layers.TCPPort(p.dst.Port()),
		Seq: p.seq, Ack: p.ack, ACK: true, Window: 65535}
	set(tcp)
	return build(p.t, p.src.Addr(), p.dst.Addr(), tcp, payload)
}

func (p *tcpPeer) write(frames ...[]byte) {
	p.t.Helper()
	if n, err := p.l.Write(frames); n != len(frames) || err != nil {
		p.t.Fatalf("write: %d of %d, %v", n, len(frames), err)
	}
}

// mine reports whether b is a TCP segment of this connection toward us.
func (p *tcpPeer) mine(b []byte) bool {
	var q packet.Parsed
	return packet.Parse(b, packet.RawIP, &q) == nil && q.Proto == packet.ProtoTCP &&
		q.DstPort == p.src.Port() && q.SrcPort == p.dst.Port()
}

// open does the three-way handshake with a kernel listener at p.dst.
func (p *tcpPeer) open() {
	p.t.Helper()
	p.seq = 1000
	p.write(p.segment(func(tcp *layers.TCP) {
		tcp.ACK, tcp.SYN = false, true
		tcp.Options = []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}}} // MSS 1460
	}, nil))
	synack := decode(p.t, readUntil(p.t, p.l, p.bigBuf, p.mine)).TransportLayer().(*layers.TCP)
	if !synack.SYN || !synack.ACK || synack.Ack != 1001 {
		p.t.Fatalf("expected SYN-ACK for 1001, got %+v", synack)
	}
	p.seq, p.ack = 1001, synack.Seq+1
	p.write(p.segment(func(*layers.TCP) {}, nil))
}

// TestTCPSuperPackets opens a TCP connection from the Link to a kernel
// listener, then moves super packets both ways: one 60000-byte segment
// written by the Link (Write derives MSS from the MTU) and one written with
// an explicit segment size arrive whole and in order at the kernel socket;
// the kernel's bulk answer arrives as super packets larger than the MTU
// when the Read buffers hold them, and as valid MTU-sized segments when
// they do not.
func TestTCPSuperPackets(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "ipv4", true: "ipv6"}[v6], func(t *testing.T) {
			ns, l := newTUN(t, tun.Options{})
			if l.MaxSuperPacketLen() != tun.MaxSuperPacketLen {
				t.Fatalf("MaxSuperPacketLen %d with offloads %#x", l.MaxSuperPacketLen(), l.Offloads())
			}
			kaddr, uaddr, network := kernel4.Addr(), user4, "tcp4"
			if v6 {
				kaddr, uaddr, network = kernel6.Addr(), user6, "tcp6"
			}
			var ln net.Listener
			if err := ns.Do(func() (err error) {
				ln, err = net.Listen(network, net.JoinHostPort(kaddr.String(), "0"))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			kport := uint16(ln.Addr().(*net.TCPAddr).Port)
			accepted := make(chan net.Conn, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					close(accepted)
					return
				}
				accepted <- c
			}()
			p := &tcpPeer{t: t, l: l, src: netip.AddrPortFrom(uaddr, 40000), dst: netip.AddrPortFrom(kaddr, kport),
				bigBuf: l.MaxSuperPacketLen()}
			p.open()
			var conn net.Conn
			select {
			case c, ok := <-accepted:
				if !ok {
					t.Fatal("accept failed")
				}
				conn = c
			case <-time.After(10 * time.Second):
				t.Fatal("kernel did not accept within 10 s")
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(20 * time.Second))

			// Link → kernel: two super packets.
			data := make([]byte, 60000+30000)
			for i := range data {
				data[i] = byte(i * 7)
			}
			first := p.segment(func(tcp *layers.TCP) { tcp.PSH = true }, data[:60000])
			if len(first) <= l.MTU() {
				t.Fatal("test packet not a super packet")
			}
			p.write(first)
			p.seq += 60000
			second := p.segment(func(tcp *layers.TCP) { tcp.PSH = true }, data[60000:])
			if n, err := l.WriteGSO([][]byte{second}, []int{1000}); n != 1 || err != nil {
				t.Fatalf("WriteGSO: %d, %v", n, err)
			}
			p.seq += 30000
			got := make([]byte, len(data))
			if _, err := io.ReadFull(conn, got); err != nil {
				t.Fatalf("kernel read: %v", err)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("kernel received different bytes")
			}

			// Kernel → Link: bulk data, read first with super-packet
			// buffers, then with MTU-sized ones.
			bulk := make([]byte, 200000)
			for i := range bulk {
				bulk[i] = byte(i * 13)
			}
			werr := make(chan error, 1)
			go func() { _, err := conn.Write(bulk); werr <- err }()
			recv := make([]byte, 0, len(bulk))
			sawSuper, sawSplit := false, false
			bigReader, smallReader := newFrameReader(l, l.MaxSuperPacketLen()), newFrameReader(l, l.MTU())
			for len(recv) < len(bulk) {
				r, bufLen := bigReader, l.MaxSuperPacketLen()
				if len(recv) >= len(bulk)/2 && len(bigReader.queued) == 0 {
					r, bufLen = smallReader, l.MTU() // the driver splits from here on
				}
				frame := r.until(t, p.mine)
				seg := decode(t, frame).TransportLayer().(*layers.TCP)
				if len(frame) > l.MTU() {
					sawSuper = true
				}
				if bufLen == l.MTU() {
					sawSplit = true
				}
				if seg.Seq != p.ack {
					t.Fatalf("segment at seq %d, expected %d (lost or reordered)", seg.Seq, p.ack)
				}
				if !bytes.Equal(seg.Payload, bulk[len(recv):len(recv)+len(seg.Payload)]) {
					t.Fatalf("payload at offset %d differs", len(recv))
				}
				recv = append(recv, seg.Payload...)
				p.ack += uint32(len(seg.Payload))
				p.write(p.segment(func(*layers.TCP) {}, nil)) // ACK everything so far
			}
			if err := <-werr; err != nil {
				t.Fatalf("kernel write: %v", err)
			}
			if !sawSuper || !sawSplit {
				t.Fatalf("super packets seen: %v, split reads: %v", sawSuper, sawSplit)
			}
		})
	}
}

// TestUDPSegmentation: a kernel socket sending with UDP_SEGMENT hands the
// device one USO super packet; the Link splits it back into the datagrams
// the socket meant, with MTU-sized buffers and with super-packet-sized ones
// alike (a UDP super packet delivered whole would be one datagram nobody
// sent).
func TestUDPSegmentation(t *testing.T) {
	for _, big := range []bool{false, true} {
		t.Run(map[bool]string{false: "mtu-bufs", true: "super-bufs"}[big], func(t *testing.T) {
			testUDPSegmentation(t, big)
		})
	}
}

func testUDPSegmentation(t *testing.T, big bool) {
	ns, l := newTUN(t, tun.Options{})
	if l.Offloads()&unix.TUN_F_USO4 == 0 {
		t.Skip("kernel refused USO on TUN (before Linux 6.2)")
	}
	var c *net.UDPConn
	if err := ns.Do(func() error {
		pc, err := net.ListenPacket("udp4", net.JoinHostPort(kernel4.Addr().String(), "0"))
		if err == nil {
			c = pc.(*net.UDPConn)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	const segSize, count = 1000, 5
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT, segSize)
	}); err != nil || serr != nil {
		t.Fatalf("UDP_SEGMENT: %v %v", err, serr)
	}
	msg := make([]byte, segSize*count-1)
	for i := range msg {
		msg[i] = byte(i)
	}
	if _, err := c.WriteToUDPAddrPort(msg, netip.AddrPortFrom(user4, 7777)); err != nil {
		t.Fatalf("kernel send: %v", err)
	}
	bufLen := l.MTU()
	if big {
		bufLen = l.MaxSuperPacketLen()
	}
	var got []byte
	r := newFrameReader(l, bufLen)
	for i := range count {
		frame := r.until(t, func(b []byte) bool {
			var p packet.Parsed
			return packet.Parse(b, packet.RawIP, &p) == nil && p.Proto == packet.ProtoUDP && p.DstPort == 7777
		})
		pl := decode(t, frame).TransportLayer().LayerPayload()
		if want := min(segSize, len(msg)-i*segSize); len(pl) != want {
			t.Fatalf("datagram %d: %d bytes, want %d", i, len(pl), want)
		}
		got = append(got, pl...)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("datagrams differ from what the socket sent")
	}
}

// TestWaitAndClose: Wait times out on an idle device, wakes for a frame,
// and Close (from another goroutine) unblocks an unbounded Wait; afterwards
// everything returns netif.ErrClosed.
func TestWaitAndClose(t *testing.T) {
	ns, l := newTUN(t, tun.Options{DisableOffloads: true, MTU: 1400, Name: "skytun" + strconv.Itoa(time.Now().Nanosecond()%1000)})
	if l.Offloads() != 0 || l.MaxSuperPacketLen() != 1400 || l.MTU() != 1400 {
		t.Fatalf("offloads %#x, max super %d, MTU %d", l.Offloads(), l.MaxSuperPacketLen(), l.MTU())
	}
	// Drain what the kernel sends on its own (IPv6 MLD, router
	// solicitations) until a quiet spell, bounded.
	bufs, sizes := [][]byte{make([]byte, 1400)}, []int{0}
	for range 100 {
		start := time.Now()
		if err := l.Wait(300 * time.Millisecond); err != nil {
			t.Fatal(err)
		}
		n, _ := l.Read(bufs, sizes)
		if n == 0 && time.Since(start) >= 300*time.Millisecond {
			break
		}
	}
	start := time.Now()
	if err := l.Wait(50 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Logf("Wait returned after %v (spurious wake-up or kernel traffic)", d)
	}
	var c net.PacketConn
	if err := ns.Do(func() (err error) {
		c, err = net.ListenPacket("udp4", net.JoinHostPort(kernel4.Addr().String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(user4, 1))); err != nil {
		t.Fatal(err)
	}
	readUntil(t, l, 1400, func(b []byte) bool { return len(b) > 0 && b[0]>>4 == 4 })

	done := make(chan error, 1)
	go func() { done <- l.Wait(-1) }()
	time.Sleep(10 * time.Millisecond) // let Wait park; it returns ErrClosed either way
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, netif.ErrClosed) {
			t.Fatalf("Wait after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Wait")
	}
	if _, err := l.Read(bufs, sizes); !errors.Is(err, netif.ErrClosed) {
		t.Fatalf("Read after Close: %v", err)
	}
	if _, err := l.Write([][]byte{{0x45}}); !errors.Is(err, netif.ErrClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestWriteTooLarge: frames over the MTU that cannot be super packets stop
// the batch with ErrFrameTooLarge, after the frames before them went out.
func TestWriteTooLarge(t *testing.T) {
	_, l := newTUN(t, tun.Options{})
	small := build(t, user4, kernel4.Addr(), &layers.UDP{SrcPort: 1, DstPort: 9}, []byte("ok"))
	bigUDP := build(t, user4, kernel4.Addr(), &layers.UDP{SrcPort: 1, DstPort: 9}, make([]byte, 3000))
	n, err := l.Write([][]byte{small, bigUDP, small})
	if n != 1 || !errors.Is(err, netif.ErrFrameTooLarge) {
		t.Fatalf("UDP super packet through Write: %d, %v", n, err)
	}
	huge := make([]byte, tun.MaxSuperPacketLen+1)
	if n, err := l.Write([][]byte{huge}); n != 0 || !errors.Is(err, netif.ErrFrameTooLarge) {
		t.Fatalf("oversized frame: %d, %v", n, err)
	}
}

func TestOptionsChecked(t *testing.T) {
	for _, o := range []tun.Options{
		{MTU: 67}, {MTU: 65536}, {Name: "0123456789abcdef"}, {BatchSize: -1},
		{Addrs: []netip.Prefix{{}}},
	} {
		if _, err := tun.New(o); err == nil {
			t.Errorf("New(%+v) succeeded", o)
		}
	}
}
