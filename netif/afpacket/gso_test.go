package afpacket_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/afpacket"
	"github.com/skylane/skylane/packet"
)

// ethFrame builds an Ethernet frame around an IP packet carrying l4 and
// payload, with lengths and checksums filled in.
func ethFrame(t testing.TB, srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, l4 gopacket.SerializableLayer, payload []byte) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}
	var ip gopacket.NetworkLayer
	proto := layers.IPProtocolTCP
	if _, ok := l4.(*layers.UDP); ok {
		proto = layers.IPProtocolUDP
	}
	if src.Is4() {
		ip = &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip = &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	}
	switch x := l4.(type) {
	case *layers.TCP:
		_ = x.SetNetworkLayerForChecksum(ip)
	case *layers.UDP:
		_ = x.SetNetworkLayerForChecksum(ip)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip.(gopacket.SerializableLayer), l4, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// tcpPeer plays the user-space end of one TCP connection through the Link,
// just enough to open it and send data: no retransmission of data, no
// options but the MSS. The local kernel owns the same address, so the
// connection is steered away from it (or it would reset the SYN-ACK).
type tcpPeer struct {
	t        testing.TB
	v        *nettest.Veth
	l        *afpacket.Link
	r        *frameReader
	src, dst netip.AddrPort
	seq, ack uint32 // next sequence number to send, next one expected
}

func (p *tcpPeer) segment(set func(*layers.TCP), payload []byte) []byte {
	tcp := &layers.TCP{SrcPort: layers.TCPPort(p.src.Port()), DstPort: layers.TCPPort(p.dst.Port()),
		Seq: p.seq, Ack: p.ack, ACK: true, Window: 65535}
	set(tcp)
	return ethFrame(p.t, p.v.LocalMAC, p.v.PeerMAC, p.src.Addr(), p.dst.Addr(), tcp, payload)
}

// mine reports whether b is a TCP segment of this connection toward us.
func (p *tcpPeer) mine(b []byte) bool {
	tcp := gopacketTCP(b)
	return tcp != nil && uint16(tcp.DstPort) == p.src.Port() && uint16(tcp.SrcPort) == p.dst.Port()
}

// open does the three-way handshake with a kernel listener at p.dst,
// sending the SYN again every 200 ms until the SYN-ACK comes (the peer's
// address may not be routed yet: see waitLocalRoute in the tun package).
func (p *tcpPeer) open() {
	p.t.Helper()
	p.seq = 1000
	syn := p.segment(func(tcp *layers.TCP) {
		tcp.ACK, tcp.SYN = false, true
		tcp.Options = []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}}} // MSS 1460
	}, nil)
	var synack *layers.TCP
	for deadline := time.Now().Add(10 * time.Second); synack == nil; {
		if time.Now().After(deadline) {
			p.t.Fatalf("no SYN-ACK within 10 s; stats %+v", p.l.Stats())
		}
		if n, err := p.l.Write([][]byte{syn}); n != 1 || err != nil {
			p.t.Fatalf("write SYN: %d, %v", n, err)
		}
		if f := p.r.within(200*time.Millisecond, p.mine); f != nil {
			synack = decode(p.t, f).TransportLayer().(*layers.TCP)
		}
	}
	if !synack.SYN || !synack.ACK || synack.Ack != 1001 {
		p.t.Fatalf("expected SYN-ACK for 1001, got %+v", synack)
	}
	p.seq, p.ack = 1001, synack.Seq+1
	if n, err := p.l.Write([][]byte{p.segment(func(*layers.TCP) {}, nil)}); n != 1 || err != nil {
		p.t.Fatalf("write ACK: %d, %v", n, err)
	}
}

// TestSuperPacketToKernel opens a TCP connection from the Link to a kernel
// listener in the peer namespace, then sends, in one Write, an MTU-sized
// segment, a 60 000-byte super packet (segment size from the MTU) and
// another segment, then a 30 000-byte super packet through WriteGSO with
// 1000-byte segments. The kernel socket reads every byte in order; a tap
// on the peer end sees a frame longer than the MTU (the super packet
// crossed the veth whole) and the sequence numbers only going up (the
// ring and the super packet path kept their order).
func TestSuperPacketToKernel(t *testing.T) {
	for _, mode := range []afpacket.TxMode{afpacket.TxRing, afpacket.TxSendmmsg} {
		for _, v6 := range []bool{false, true} {
			name := map[afpacket.TxMode]string{afpacket.TxRing: "ring", afpacket.TxSendmmsg: "sendmmsg"}[mode] +
				map[bool]string{false: "/ipv4", true: "/ipv6"}[v6]
			t.Run(name, func(t *testing.T) { testSuperPacketToKernel(t, mode, v6) })
		}
	}
}

func testSuperPacketToKernel(t *testing.T, mode afpacket.TxMode, v6 bool) {
	v, l := newLink(t, nettest.VethOptions{}, afpacket.Options{TxMode: mode, Steer: true})
	if l.MaxSuperPacketLen() < 65535 {
		t.Fatalf("MaxSuperPacketLen %d", l.MaxSuperPacketLen())
	}
	local, peerAddr, network := v.LocalAddr.Addr(), v.PeerAddr.Addr(), "tcp4"
	if v6 {
		local, peerAddr, network = v.LocalAddr6.Addr(), v.PeerAddr6.Addr(), "tcp6"
	}
	var tap *afpacket.Link
	var ln net.Listener
	if err := v.Peer.Do(func() (err error) {
		if tap, err = afpacket.New(afpacket.Options{Interface: v.PeerName}); err != nil {
			return err
		}
		ln, err = net.Listen(network, net.JoinHostPort(peerAddr.String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer tap.Close()
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	p := &tcpPeer{t: t, v: v, l: l, r: newFrameReader(t, l, l.MaxSuperPacketLen()),
		src: netip.AddrPortFrom(local, 40000), dst: netip.AddrPortFrom(peerAddr, uint16(ln.Addr().(*net.TCPAddr).Port))}
	// The local kernel has no socket for this connection: keep the peer's
	// answers from it, or it resets them.
	if err := l.SteerFlow(packet.MakeKey(packet.ProtoTCP, p.src, p.dst)); err != nil {
		t.Fatal(err)
	}
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

	data := make([]byte, 1000+60000+1000+30000)
	for i := range data {
		data[i] = byte(i * 7)
	}
	next := func(n int, set func(*layers.TCP)) []byte {
		off := int(p.seq - 1001)
		f := p.segment(set, data[off:off+n])
		p.seq += uint32(n)
		return f
	}
	batch := [][]byte{
		next(1000, func(*layers.TCP) {}),
		next(60000, func(*layers.TCP) {}),
		next(1000, func(tcp *layers.TCP) { tcp.PSH = true }),
	}
	if len(batch[1]) <= netif.MaxFrameLen(l.MTU(), l.LinkType()) {
		t.Fatal("test frame is not a super packet")
	}
	if n, err := l.Write(batch); n != len(batch) || err != nil {
		t.Fatalf("Write: %d, %v (stats %+v)", n, err, l.Stats())
	}
	got := make([]byte, len(data))
	if _, err := io.ReadFull(conn, got[:62000]); err != nil {
		t.Fatalf("kernel read: %v", err)
	}
	last := next(30000, func(tcp *layers.TCP) { tcp.PSH = true })
	if n, err := l.WriteGSO([][]byte{last}, []int{1000}); n != 1 || err != nil {
		t.Fatalf("WriteGSO: %d, %v", n, err)
	}
	if _, err := io.ReadFull(conn, got[62000:]); err != nil {
		t.Fatalf("kernel read: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("kernel received different bytes")
	}
	if s := l.Stats(); s.TxDrops != 0 {
		t.Fatalf("stats %+v", s)
	}

	// What crossed the wire, as the peer end received it.
	r := newFrameReader(t, tap, tap.MaxSuperPacketLen())
	seq, super := uint32(1001), false
	for seq != p.seq {
		f := r.until(func(b []byte) bool {
			tcp := gopacketTCP(b)
			return tcp != nil && uint16(tcp.SrcPort) == p.src.Port() && len(tcp.Payload) > 0
		})
		tcp := decode(t, f).TransportLayer().(*layers.TCP)
		if tcp.Seq != seq {
			t.Fatalf("peer received seq %d, expected %d: reordered or lost", tcp.Seq-1001, seq-1001)
		}
		seq += uint32(len(tcp.Payload))
		super = super || len(f) > netif.MaxFrameLen(l.MTU(), l.LinkType())
	}
	if !super {
		t.Fatal("no super packet reached the peer: the kernel segmented before the veth")
	}
}

// TestUDPSuperPacketToKernel: a UDP super packet sent with WriteGSO arrives
// at the peer's kernel socket as the datagrams it stands for.
func TestUDPSuperPacketToKernel(t *testing.T) {
	for _, mode := range []afpacket.TxMode{afpacket.TxRing, afpacket.TxSendmmsg} {
		t.Run(map[afpacket.TxMode]string{afpacket.TxRing: "ring", afpacket.TxSendmmsg: "sendmmsg"}[mode], func(t *testing.T) {
			v, l := newLink(t, nettest.VethOptions{}, afpacket.Options{TxMode: mode})
			c := listenUDP(t, v.Peer, v.PeerAddr.Addr())
			const segSize, count = 1000, 5
			msg := make([]byte, segSize*count-1)
			for i := range msg {
				msg[i] = byte(i)
			}
			dst := netip.AddrPortFrom(v.PeerAddr.Addr(), uint16(c.LocalAddr().(*net.UDPAddr).Port))
			f := ethFrame(t, v.LocalMAC, v.PeerMAC, v.LocalAddr.Addr(), dst.Addr(),
				&layers.UDP{SrcPort: 5000, DstPort: layers.UDPPort(dst.Port())}, msg)
			// Without a segment size, Write cannot know the datagrams.
			if n, err := l.Write([][]byte{f}); n != 0 || !errors.Is(err, netif.ErrFrameTooLarge) {
				t.Fatalf("Write of a UDP super packet: %d, %v; want ErrFrameTooLarge", n, err)
			}
			if n, err := l.WriteGSO([][]byte{f}, []int{segSize}); n != 1 || err != nil {
				t.Fatalf("WriteGSO: %d, %v", n, err)
			}
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, 2*segSize)
			var got []byte
			for i := range count {
				n, err := c.Read(buf)
				if err != nil {
					t.Fatalf("peer read %d: %v", i, err)
				}
				if want := min(segSize, len(msg)-i*segSize); n != want {
					t.Fatalf("datagram %d: %d bytes, want %d", i, n, want)
				}
				got = append(got, buf[:n]...)
			}
			if !bytes.Equal(got, msg) {
				t.Fatal("datagrams differ from the super packet's payload")
			}
		})
	}
}

// TestUDPSuperPacketRead: a kernel socket in the peer namespace sending
// with UDP_SEGMENT puts one USO super packet on the veth; Read splits it
// into its datagrams even into buffers that would hold it whole.
func TestUDPSuperPacketRead(t *testing.T) {
	v, l := newLink(t, nettest.VethOptions{}, afpacket.Options{})
	c := listenUDP(t, v.Peer, v.PeerAddr.Addr())
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
		msg[i] = byte(i * 3)
	}
	if _, err := c.WriteToUDPAddrPort(msg, netip.AddrPortFrom(v.LocalAddr.Addr(), 7777)); err != nil {
		t.Fatalf("kernel send: %v", err)
	}
	r := newFrameReader(t, l, l.MaxSuperPacketLen())
	var got []byte
	for i := range count {
		pl := decode(t, r.until(udpTo(7777))).TransportLayer().LayerPayload()
		if want := min(segSize, len(msg)-i*segSize); len(pl) != want {
			t.Fatalf("datagram %d: %d bytes, want %d", i, len(pl), want)
		}
		got = append(got, pl...)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("datagrams differ from what the socket sent")
	}
}

// TestSuperPacketErrors: frames over MaxFrameLen that cannot go as super
// packets stop the batch with ErrFrameTooLarge after the frames before them,
// and nothing after them is sent or counted.
func TestSuperPacketErrors(t *testing.T) {
	v, l := newLink(t, nettest.VethOptions{}, afpacket.Options{})
	src, dst := v.LocalAddr.Addr(), v.PeerAddr.Addr()
	tcp := func(n int) []byte {
		return ethFrame(t, v.LocalMAC, v.PeerMAC, src, dst, &layers.TCP{SrcPort: 1, DstPort: 9, ACK: true}, make([]byte, n))
	}
	small := udpFrame(t, v.LocalMAC, v.PeerMAC, netip.AddrPortFrom(src, 1), netip.AddrPortFrom(dst, 9), []byte("ok"))
	notIP := make([]byte, 3000) // Ethernet type 0
	vlan := tcp(5000)
	vlan = append(vlan[:12:12], append([]byte{0x81, 0x00, 0, 5}, vlan[12:]...)...) // tagged, VLAN 5
	for _, tc := range []struct {
		name  string
		frame []byte
		seg   int
		ok    bool
	}{
		{"not IP", notIP, 0, false},
		{"longer than MaxSuperPacketLen", append(tcp(60000), make([]byte, 6000)...), 0, false},
		{"IPv4 header claims less than the frame", append(tcp(3000), 0), 0, false},
		{"TCP", tcp(3000), 0, true},
		{"TCP with a segment size", tcp(3000), 500, true},
		{"VLAN-tagged TCP", vlan, 0, true},
	} {
		before := l.Stats()
		n, err := l.WriteGSO([][]byte{small, tc.frame, small}, []int{0, tc.seg})
		after := l.Stats()
		if tc.ok {
			if n != 3 || err != nil || after.TxPackets-before.TxPackets != 3 {
				t.Errorf("%s: %d, %v, %d sent; want 3 sent", tc.name, n, err, after.TxPackets-before.TxPackets)
			}
			continue
		}
		if n != 1 || !errors.Is(err, netif.ErrFrameTooLarge) {
			t.Errorf("%s: %d, %v; want 1, ErrFrameTooLarge", tc.name, n, err)
		}
		if after.TxPackets-before.TxPackets != 1 || after.TxDrops != before.TxDrops {
			t.Errorf("%s: stats went from %+v to %+v; want one frame sent, none dropped", tc.name, before, after)
		}
	}
}
