package afxdp_test

import (
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/afxdp"
	"github.com/skylane/skylane/netif/steer"
	"github.com/skylane/skylane/packet"
)

// TestTCPFromOffloadingPeer: a kernel TCP client in the peer, with its
// offloads on (TSO, checksum offload: a veth's default), sends a stream
// whose frames are steered to the link. In generic mode with multi-buffer
// its TSO super packets arrive whole in a MaxSuperPacketLen buffer and as
// MTU-sized segments in a MaxFrameLen one; in native mode (the peer then
// segments in software) and without multi-buffer, as MTU-sized frames.
// Whatever the path, every frame's checksums verify and the payload is the
// bytes the client wrote.
func TestTCPFromOffloadingPeer(t *testing.T) {
	nettest.RequirePriv(t)
	for _, c := range []struct {
		name      string
		o         afxdp.Options
		whole     bool // read with MaxSuperPacketLen buffers
		wantSuper bool // super packets must arrive
		want      int  // bytes from the stream's start to see
	}{
		// The initial window: 10 segments of 1448 bytes.
		{"generic/whole", afxdp.Options{Mode: steer.XDPGeneric}, true, true, 10 * 1448},
		{"generic/split", afxdp.Options{Mode: steer.XDPGeneric}, false, true, 10 * 1448},
		{"native/whole", afxdp.Options{Mode: steer.XDPNative}, true, false, 10 * 1448},
		// The kernel drops the super packet (too long for one frame);
		// the client's loss probe and retransmissions come one segment
		// at a time, the first a tail loss probe of the last segment.
		{"generic-single-buffer", afxdp.Options{Mode: steer.XDPGeneric, SingleBuffer: true}, true, false, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := nettest.NewVeth(t, nettest.VethOptions{})
			l := openLink(t, v, c.o)
			if l.MultiBuffer() == c.o.SingleBuffer {
				t.Fatalf("MultiBuffer() = %v with SingleBuffer %v", l.MultiBuffer(), c.o.SingleBuffer)
			}
			if !l.CompletesChecksums() {
				t.Fatal("checksum mode auto does not complete checksums on a veth")
			}
			maxFrame := netif.MaxFrameLen(l.MTU(), l.LinkType())
			bufLen := maxFrame
			if c.whole {
				bufLen = l.MaxSuperPacketLen()
			}
			client, server := tcpPair(t, v, 7100)
			defer server.Close()
			defer client.Close()
			local := client.RemoteAddr().(*net.TCPAddr).AddrPort()
			remote := client.LocalAddr().(*net.TCPAddr).AddrPort()
			if err := l.SteerFlow(packet.MakeKey(packet.ProtoTCP, local, remote)); err != nil {
				t.Fatal(err)
			}
			// The server's kernel never sees the data, so it never
			// acknowledges it: the client sends its initial window (10
			// segments, one TSO super packet), then retransmits.
			const size = 64 << 10
			data := pattern(size)
			go client.Write(data)

			got := map[uint32]int{} // byte offset -> length, of frames seen
			var super, frames int
			bufs := make([][]byte, l.BatchSize())
			for i := range bufs {
				bufs[i] = make([]byte, bufLen)
			}
			sizes := make([]int, len(bufs))
			deadline := time.Now().Add(waitLimit)
			stats := l.XDPStats
			for covered(got) < c.want || frames == 0 || (c.wantSuper && stats().RxSuperPackets == 0) {
				left := time.Until(deadline)
				if left <= 0 {
					t.Fatalf("after %v: %d frames, %d super packets, %d bytes in order; stats %+v", waitLimit, frames, super, covered(got), l.XDPStats())
				}
				if err := l.Wait(left); err != nil {
					t.Fatal(err)
				}
				n, err := l.Read(bufs, sizes)
				if err != nil {
					t.Fatal(err)
				}
				for i := range n {
					f := bufs[i][:sizes[i]]
					if len(f) > maxFrame {
						if !c.whole {
							t.Fatalf("%d-byte frame in a %d-byte buffer: want segments of at most %d", len(f), bufLen, maxFrame)
						}
						super++
					}
					seq, payload := checkTCP(t, f)
					if len(payload) == 0 {
						continue
					}
					frames++
					// Each 4-byte word of the stream is its offset, and
					// segments start at multiples of 4 (MSS 1448).
					if len(payload) < 4 {
						t.Fatalf("%d-byte segment at %d", len(payload), seq)
					}
					off := binary.BigEndian.Uint32(payload)
					if int(off)+len(payload) > size || string(payload) != string(data[off:int(off)+len(payload)]) {
						t.Fatalf("frame at offset %d (%d bytes): payload differs from what the client wrote", off, len(payload))
					}
					got[off] = max(got[off], len(payload))
				}
			}
			s := l.XDPStats()
			t.Logf("%d frames, %d super packets whole; stats %+v", frames, super, s)
			if c.wantSuper && s.RxSuperPackets == 0 {
				t.Error("no super packet counted")
			}
			if !c.whole && c.wantSuper && s.RxSuperSplit == 0 {
				t.Error("no super packet split for the short buffers")
			}
			if !c.wantSuper && s.RxSuperPackets != 0 {
				t.Errorf("%d super packets in a mode that carries none", s.RxSuperPackets)
			}
			if c.o.SingleBuffer && s.KernelRxDropped == 0 {
				t.Error("no super packet dropped by the kernel without multi-buffer")
			}
			if !c.wantSuper && s.RxCsumCompleted == 0 {
				t.Error("no partial checksum completed, from a peer with checksum offload")
			}
			if s.BadDescs != 0 || s.BadChains != 0 || s.RxBadSuper != 0 {
				t.Errorf("bad descriptors or chains: %+v", s)
			}
		})
	}
}

// tcpPair connects a kernel client in v's peer to a kernel server in its
// local namespace, on port.
func tcpPair(t *testing.T, v *nettest.Veth, port uint16) (client, server *net.TCPConn) {
	t.Helper()
	var ln net.Listener
	if err := v.Local.Do(func() (err error) {
		ln, err = net.Listen("tcp4", ap(local4, port).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := v.Peer.Do(func() error {
		c, err := net.DialTimeout("tcp4", ap(local4, port).String(), waitLimit)
		if err == nil {
			client = c.(*net.TCPConn)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		client.Close()
		t.Fatal(err)
	}
	return client, s.(*net.TCPConn)
}

// pattern is n bytes (n a multiple of 4) in which each 4-byte word holds
// its own offset, big endian.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 4 {
		binary.BigEndian.PutUint32(b[i:], uint32(i))
	}
	return b
}

// covered is how many bytes from offset 0 the frames seen cover without a
// gap.
func covered(got map[uint32]int) int {
	end := uint32(0)
	for {
		n, ok := got[end]
		if !ok || n == 0 {
			return int(end)
		}
		end += uint32(n)
	}
}

// checkTCP decodes an Ethernet/IPv4/TCP frame with gopacket and checks its
// IP and TCP checksums by recomputing them; it returns the sequence number
// and the payload.
func checkTCP(t *testing.T, f []byte) (uint32, []byte) {
	t.Helper()
	p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
	ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if ip == nil || tcp == nil {
		t.Fatalf("%d-byte frame is not IPv4/TCP: %v", len(f), p)
	}
	if int(ip.Length)+14 != len(f) {
		t.Fatalf("IP length %d in a %d-byte frame", ip.Length, len(f))
	}
	ipSum, tcpSum := ip.Checksum, tcp.Checksum
	tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, ip, tcp, gopacket.Payload(tcp.Payload)); err != nil {
		t.Fatal(err)
	}
	q := gopacket.NewPacket(buf.Bytes(), layers.LayerTypeIPv4, gopacket.Default)
	ip2, _ := q.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	tcp2, _ := q.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if ip2.Checksum != ipSum || !sameSum(tcp2.Checksum, tcpSum) {
		t.Fatalf("%d-byte frame (seq %d): checksums IP %#04x TCP %#04x, want %#04x %#04x", len(f), tcp.Seq, ipSum, tcpSum, ip2.Checksum, tcp2.Checksum)
	}
	return tcp.Seq, tcp.Payload
}

// sameSum: one's complement has two zeros, and a TCP checksum may carry
// either (Linux writes 0xffff for a computed 0).
func sameSum(a, b uint16) bool {
	return a == b || (a == 0 && b == 0xffff) || (a == 0xffff && b == 0)
}

// TestWriteGSO: a UDP super packet given a datagram size leaves as the
// datagrams it stands for, cut in software (AF_XDP has no segmentation
// offload); without a size, or on a single-buffer link, it is refused.
func TestWriteGSO(t *testing.T) {
	nettest.RequirePriv(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	l := openLink(t, v, afxdp.Options{})
	p9000 := udpIn(t, v.Peer, ap(peer4, 9000))
	const seg, count = 1000, 5
	payload := make([]byte, seg*count)
	want := map[string]bool{}
	for i := range count {
		for j := range seg {
			payload[i*seg+j] = byte('a' + i)
		}
		want[string(payload[i*seg:(i+1)*seg])] = true
	}
	super := buildUDP(t, v.LocalMAC, v.PeerMAC, ap(local4, 7000), ap(peer4, 9000), string(payload))
	small := buildUDP(t, v.LocalMAC, v.PeerMAC, ap(local4, 7000), ap(peer4, 9000), "small")
	want["small"] = true
	if n, err := l.WriteGSO([][]byte{super, small}, []int{seg}); n != 2 || err != nil {
		t.Fatalf("WriteGSO: %d, %v", n, err)
	}
	recvAll(t, p9000, want)
	if s := l.XDPStats(); s.TxSuperPackets != 1 || s.TxPackets != count+1 {
		t.Errorf("stats %+v: want 1 super packet, %d frames", s, count+1)
	}
	if n, err := l.Write([][]byte{small, super}); n != 1 || !errors.Is(err, netif.ErrFrameTooLarge) {
		t.Errorf("Write of a UDP super packet without a size: %d, %v; want 1, ErrFrameTooLarge", n, err)
	}

	single := openLink(t, nettest.NewVeth(t, nettest.VethOptions{}), afxdp.Options{SingleBuffer: true})
	if single.MaxSuperPacketLen() != netif.MaxFrameLen(single.MTU(), single.LinkType()) {
		t.Errorf("single buffer: MaxSuperPacketLen %d", single.MaxSuperPacketLen())
	}
	if n, err := single.WriteGSO([][]byte{super}, []int{seg}); n != 0 || !errors.Is(err, netif.ErrFrameTooLarge) {
		t.Errorf("single buffer WriteGSO: %d, %v; want ErrFrameTooLarge", n, err)
	}
}
