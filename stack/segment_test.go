package stack

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/refs"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/netif/gso"
	"github.com/skylane/skylane/packet"
)

// TestMain fails the run if a PacketBuffer or buffer chunk is still
// referenced once every test is done.
func TestMain(m *testing.M) {
	refs.SetLeakMode(refs.LeaksPanic)
	code := m.Run()
	refs.DoLeakCheck()
	os.Exit(code)
}

// gsoPacket builds what netstack hands a host-GSO endpoint: IP and TCP
// headers (the TCP checksum holding only the pseudo-header sum, as
// CHECKSUM_PARTIAL) in front of a payload split over several views of
// awkward sizes, so segment's walk crosses view boundaries mid-segment.
func gsoPacket(t *testing.T, v6 bool, payload []byte, mss int, flags header.TCPFlags) *gstack.PacketBuffer {
	t.Helper()
	var buf buffer.Buffer
	for rest, sz := payload, 1000; len(rest) > 0; sz = sz*2 + 333 {
		n := min(sz, len(rest))
		buf.Append(buffer.NewViewWithData(rest[:n]))
		rest = rest[n:]
	}
	pkt := gstack.NewPacketBuffer(gstack.PacketBufferOptions{ReserveHeaderBytes: 80, Payload: buf})
	opts := []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2} // NOP NOP timestamps
	th := header.TCP(pkt.TransportHeader().Push(header.TCPMinimumSize + len(opts)))
	copy(th[header.TCPMinimumSize:], opts)
	src, dst := tcpip.AddrFrom4([4]byte{198, 18, 0, 1}), tcpip.AddrFrom4([4]byte{198, 18, 0, 2})
	np, gt := header.IPv4ProtocolNumber, gstack.GSOTCPv4
	if v6 {
		src = tcpip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 1})
		dst = tcpip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 2})
		np, gt = header.IPv6ProtocolNumber, gstack.GSOTCPv6
	}
	total := uint16(len(th) + len(payload))
	th.EncodePartial(header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, total), total,
		1000, 2000, flags, 512)
	th.SetSourcePort(443)
	th.SetDestinationPort(40000)
	th.SetDataOffset(uint8(len(th)))
	if v6 {
		ip := header.IPv6(pkt.NetworkHeader().Push(header.IPv6MinimumSize))
		ip.Encode(&header.IPv6Fields{PayloadLength: total, TransportProtocol: header.TCPProtocolNumber,
			HopLimit: 64, SrcAddr: src, DstAddr: dst})
	} else {
		ip := header.IPv4(pkt.NetworkHeader().Push(header.IPv4MinimumSize))
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(header.IPv4MinimumSize) + total, ID: 0xfff0,
			Flags: header.IPv4FlagDontFragment, TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: src, DstAddr: dst})
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	pkt.NetworkProtocolNumber = np
	pkt.TransportProtocolNumber = header.TCPProtocolNumber
	pkt.GSOOptions = gstack.GSO{Type: gt, NeedsCsum: true, MSS: uint16(mss), CsumOffset: header.TCPChecksumOffset}
	return pkt
}

// cut copies the GSO packet pkt whole, as the endpoint puts it in a
// buffer, completes its checksum, checks that the super packet verifies
// as it is (what a stack gets when a wire carries it whole), then cuts it
// with netif/gso, as the nexus does, into bufs.
func cut(t *testing.T, pkt *gstack.PacketBuffer, bufs []channel.Buf) {
	t.Helper()
	whole := make([]byte, 1<<16)
	n := copyPacket(pkt, whole)
	whole = whole[:n]
	nl := len(pkt.NetworkHeader().Slice())
	finishTCPChecksum(whole, nl)
	if !tcpChecksumValid(whole, nl) {
		t.Fatal("the super packet's TCP checksum does not verify")
	}
	var g gso.Super
	if err := g.Init(whole, 0, int(pkt.GSOOptions.MSS)); err != nil || g.Segments() != len(bufs) {
		t.Fatalf("gso: %v, %d segments, want %d", err, g.Segments(), len(bufs))
	}
	for i := range bufs {
		k, err := g.Segment(i, bufs[i].Data)
		if err != nil {
			t.Fatal(err)
		}
		bufs[i].Data = bufs[i].Data[:k]
	}
}

// tcpChecksumValid reports whether the TCP checksum of the IP packet b,
// TCP header at nl, verifies over the pseudo header.
func tcpChecksumValid(b []byte, nl int) bool {
	var src, dst tcpip.Address
	if b[0]>>4 == 4 {
		src, dst = header.IPv4(b).SourceAddress(), header.IPv4(b).DestinationAddress()
	} else {
		src, dst = header.IPv6(b).SourceAddress(), header.IPv6(b).DestinationAddress()
	}
	tcp := b[nl:]
	x := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(tcp)))
	return checksum.Checksum(tcp, x) == 0xffff
}

// TestSegment copies GSO packets whole with their checksum completed, as
// the endpoint does, cuts them as the nexus would (netif/gso) and checks
// every segment independently: it parses (packet.Parse), its IP length and
// (IPv4) header checksum and ID are right, its TCP checksum verifies over
// the pseudo header, its sequence number follows on, FIN and PSH are only
// on the last segment and CWR only on the first, and the payloads
// concatenate to the original.
func TestSegment(t *testing.T) {
	for _, tc := range []struct {
		v6      bool
		size    int
		mss     int
		flags   header.TCPFlags
		wantSeg int
	}{
		{false, 64000, 1448, header.TCPFlagAck | header.TCPFlagPsh, 45},
		{false, 1449, 1448, header.TCPFlagAck | header.TCPFlagFin | header.TCPFlagCwr, 2},
		{false, 2896, 1448, header.TCPFlagAck, 2},
		{true, 65000, 1428, header.TCPFlagAck | header.TCPFlagPsh, 46},
		{true, 3001, 1000, header.TCPFlagAck | header.TCPFlagFin, 4},
	} {
		t.Run(fmt.Sprintf("v6=%v/size=%d/mss=%d", tc.v6, tc.size, tc.mss), func(t *testing.T) {
			payload := make([]byte, tc.size)
			for i := range payload {
				payload[i] = byte(i*7 + i>>8)
			}
			pkt := gsoPacket(t, tc.v6, payload, tc.mss, tc.flags)
			defer pkt.DecRef()
			bufs := make([]channel.Buf, tc.wantSeg)
			for i := range bufs {
				bufs[i].Data = make([]byte, 2048)
			}
			cut(t, pkt, bufs)
			var got []byte
			var p packet.Parsed
			for i, b := range bufs {
				d := b.Data
				if err := packet.Parse(d, packet.RawIP, &p); err != nil {
					t.Fatalf("segment %d: %v", i, err)
				}
				if p.IPLen != len(d) || len(d) > 1500 {
					t.Fatalf("segment %d: IP length %d, buffer %d", i, p.IPLen, len(d))
				}
				var src, dst tcpip.Address
				if tc.v6 {
					src, dst = header.IPv6(d).SourceAddress(), header.IPv6(d).DestinationAddress()
				} else {
					ip := header.IPv4(d)
					if !ip.IsChecksumValid() {
						t.Fatalf("segment %d: bad IPv4 header checksum", i)
					}
					if ip.ID() != 0xfff0+uint16(i) {
						t.Fatalf("segment %d: IPv4 ID %#x", i, ip.ID())
					}
					src, dst = ip.SourceAddress(), ip.DestinationAddress()
				}
				tcp := d[p.L4Off:]
				x := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(tcp)))
				if checksum.Checksum(tcp, x) != 0xffff {
					t.Fatalf("segment %d: TCP checksum does not verify", i)
				}
				if want := uint32(1000 + i*tc.mss); p.Seq != want {
					t.Fatalf("segment %d: seq %d, want %d", i, p.Seq, want)
				}
				last := i == len(bufs)-1
				f := header.TCPFlags(p.Flags)
				wantF := tc.flags
				if !last {
					wantF &^= header.TCPFlagFin | header.TCPFlagPsh
				}
				if i > 0 {
					wantF &^= header.TCPFlagCwr
				}
				if f != wantF {
					t.Fatalf("segment %d: flags %v, want %v", i, f, wantF)
				}
				if !last && p.PayloadLen != tc.mss {
					t.Fatalf("segment %d: %d payload bytes, want the MSS %d", i, p.PayloadLen, tc.mss)
				}
				if binary.BigEndian.Uint16(tcp[14:16]) != 512 {
					t.Fatalf("segment %d: window changed", i)
				}
				got = append(got, d[p.PayloadOff:p.PayloadOff+p.PayloadLen]...)
			}
			if !bytes.Equal(got, payload) {
				t.Fatal("the segments' payloads do not concatenate to the original")
			}
		})
	}
}

// TestCopyPacketFinishesChecksum: a GSO-typed packet no larger than the MSS
// is copied whole, its partial TCP checksum completed.
func TestCopyPacketFinishesChecksum(t *testing.T) {
	payload := bytes.Repeat([]byte{0xab}, 999)
	pkt := gsoPacket(t, false, payload, 1448, header.TCPFlagAck)
	defer pkt.DecRef()
	b := make([]byte, 2048)
	n := copyPacket(pkt, b)
	b = b[:n]
	finishTCPChecksum(b, header.IPv4MinimumSize)
	ip := header.IPv4(b)
	tcp := b[header.IPv4MinimumSize:]
	x := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tcp)))
	if n != int(ip.TotalLength()) || checksum.Checksum(tcp, x) != 0xffff {
		t.Fatalf("copied %d bytes (IP length %d), checksum valid %v", n, ip.TotalLength(), checksum.Checksum(tcp, x) == 0xffff)
	}
}

// BenchmarkCopySuper measures what the endpoint does to a 64 KB GSO
// packet: one copy into a buffer and the TCP checksum over it.
func BenchmarkCopySuper(b *testing.B) {
	t := &testing.T{}
	payload := make([]byte, 64000)
	pkt := gsoPacket(t, false, payload, 1448, header.TCPFlagAck)
	defer pkt.DecRef()
	buf := make([]byte, 1<<16)
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		n := copyPacket(pkt, buf)
		finishTCPChecksum(buf[:n], header.IPv4MinimumSize)
	}
}
