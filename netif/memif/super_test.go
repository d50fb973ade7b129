package memif_test

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
)

const superLen = 16<<10 + netif.EthernetHeaderLen

func superPair(t *testing.T) (netif.SuperPacketLink, netif.Link) {
	a, b := newPair(t, memif.Options{MaxSuperPacketLen: superLen, QueueLen: 16})
	s, ok := a.(netif.SuperPacketLink)
	if !ok || s.MaxSuperPacketLen() != superLen {
		t.Fatalf("not a SuperPacketLink of %d bytes", superLen)
	}
	return s, b
}

// superFrame is an Ethernet TCP (or UDP) super packet with payload bytes
// of a pattern, checksums valid.
func superFrame(proto uint8, payload int) []byte {
	p := make([]byte, payload)
	for i := range p {
		p[i] = byte(i*13 + 1)
	}
	f := packettest.Frame{Src: netip.MustParseAddrPort("198.18.0.1:4000"), Dst: netip.MustParseAddrPort("198.18.0.2:80"),
		Proto: proto, Seq: 1000, Flags: packet.TCPAck | packet.TCPPsh, ID: 7, Payload: p,
		TCPOptions: packettest.TCPTimestamp(1, 2)}
	return f.Bytes()
}

// payloadOf decodes an Ethernet frame with gopacket, checks its IP and L4
// checksums and returns its L4 payload.
func payloadOf(t *testing.T, f []byte) []byte {
	t.Helper()
	p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
	if el := p.ErrorLayer(); el != nil {
		t.Fatalf("gopacket: %v", el.Error())
	}
	ip := p.NetworkLayer().(*layers.IPv4)
	if err, r := ip.VerifyChecksum(); err != nil || !r.Valid {
		t.Fatalf("IPv4 checksum invalid")
	}
	switch l4 := p.TransportLayer().(type) {
	case *layers.TCP:
		_ = l4.SetNetworkLayerForChecksum(ip)
		if err, r := l4.VerifyChecksum(); err != nil || !r.Valid {
			t.Fatalf("TCP checksum invalid")
		}
	case *layers.UDP:
		_ = l4.SetNetworkLayerForChecksum(ip)
		if err, r := l4.VerifyChecksum(); err != nil || !r.Valid {
			t.Fatalf("UDP checksum invalid")
		}
	}
	return p.TransportLayer().LayerPayload()
}

// TestSuperWhole: a TCP super packet crosses whole, byte for byte, into a
// buffer that holds it.
func TestSuperWhole(t *testing.T) {
	a, b := superPair(t)
	f := superFrame(packet.ProtoTCP, 12000)
	if n, err := a.WriteGSO([][]byte{f}, []int{1448}); n != 1 || err != nil {
		t.Fatalf("WriteGSO = %d, %v", n, err)
	}
	bufs, sizes := [][]byte{make([]byte, superLen)}, []int{0}
	if n, err := b.Read(bufs, sizes); n != 1 || err != nil || !bytes.Equal(bufs[0][:sizes[0]], f) {
		t.Fatalf("Read = %d, %v, %d bytes; want the super packet whole", n, err, sizes[0])
	}
}

// TestSuperSplit: read into MTU buffers, a TCP super packet arrives as
// valid segments of at most MaxFrameLen, across Read calls, whose payloads
// add up to its own; a UDP super packet is cut into its datagrams even
// into a buffer that would hold it whole.
func TestSuperSplit(t *testing.T) {
	for _, tc := range []struct {
		name  string
		proto uint8
		seg   int
		big   bool // read buffers of MaxSuperPacketLen
		segs  int
	}{
		{"tcp-mss", packet.ProtoTCP, 0, false, 9}, // 12000 / 1448, the MSS at the MTU
		{"tcp-536", packet.ProtoTCP, 536, false, 23},
		{"udp", packet.ProtoUDP, 1000, true, 12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := superPair(t)
			f := superFrame(tc.proto, 12000)
			if n, err := a.WriteGSO([][]byte{f, frame(1, 60)}, []int{tc.seg}); n != 2 || err != nil {
				t.Fatalf("WriteGSO = %d, %v", n, err)
			}
			size := netif.MaxFrameLen(1500, packet.Ethernet)
			if tc.big {
				size = superLen
			}
			var got []byte
			segs := 0
			for range 100 { // 4 buffers a call: several calls per super packet
				bufs := [][]byte{make([]byte, size), make([]byte, size), make([]byte, size), make([]byte, size)}
				sizes := make([]int, 4)
				n, err := b.Read(bufs, sizes)
				if err != nil {
					t.Fatal(err)
				}
				for i := range n {
					if segs == tc.segs { // the plain frame after the super packet
						if !bytes.Equal(bufs[i][:sizes[i]], frame(1, 60)) {
							t.Fatal("frame after the super packet garbled")
						}
						segs++
						continue
					}
					if sizes[i] > netif.MaxFrameLen(1500, packet.Ethernet) {
						t.Fatalf("segment %d: %d bytes", segs, sizes[i])
					}
					got = append(got, payloadOf(t, bufs[i][:sizes[i]])...)
					segs++
				}
				if n == 0 {
					break
				}
			}
			if segs != tc.segs+1 {
				t.Fatalf("%d frames read, want %d segments and a frame", segs, tc.segs+1)
			}
			if !bytes.Equal(got, payloadOf(t, f)) {
				t.Fatal("segments do not add up to the super packet's payload")
			}
			if s := b.Stats(); s.RxPackets != uint64(tc.segs+1) || s.RxDrops != 0 {
				t.Errorf("stats %+v", s)
			}
		})
	}
}

// TestSuperRefused: what cannot cross as a super packet stops the batch
// with ErrFrameTooLarge, after the frames before it.
func TestSuperRefused(t *testing.T) {
	icmp := superFrame(packet.ProtoICMP, 3000)
	for _, tc := range []struct {
		name string
		f    []byte
		seg  int
	}{
		{"icmp", icmp, 1000},
		{"udp-no-size", superFrame(packet.ProtoUDP, 3000), 0},
		{"seg-over-mtu", superFrame(packet.ProtoTCP, 3000), 1500},
		{"too-long", superFrame(packet.ProtoTCP, superLen), 1000},
		{"not-ip", frame(3, 3000), 1000},
	} {
		a, b := superPair(t)
		n, err := a.WriteGSO([][]byte{frame(0, 60), tc.f}, []int{0, tc.seg})
		if n != 1 || !errors.Is(err, netif.ErrFrameTooLarge) {
			t.Errorf("%s: WriteGSO = %d, %v; want 1, ErrFrameTooLarge", tc.name, n, err)
		}
		bufs, sizes := bufsFor(b, 4)
		if n, _ := b.Read(bufs, sizes); n != 1 {
			t.Errorf("%s: read %d frames, want 1", tc.name, n)
		}
	}
	if _, _, err := memif.NewPair(memif.Options{MaxSuperPacketLen: 1000}); err == nil {
		t.Error("MaxSuperPacketLen below MaxFrameLen accepted")
	}
	if _, _, err := memif.NewPair(memif.Options{MaxSuperPacketLen: 70000}); err == nil {
		t.Error("MaxSuperPacketLen above 64 KiB accepted")
	}
}

// FuzzSuper writes arbitrary frames padded past the MTU as super packets
// with arbitrary segment sizes and reads them into MTU buffers: no panic,
// and every frame read fits its buffer.
func FuzzSuper(f *testing.F) {
	f.Add(superFrame(packet.ProtoTCP, 100), uint16(0))
	f.Add(superFrame(packet.ProtoUDP, 100), uint16(7))
	a, b, err := memif.NewPair(memif.Options{MaxSuperPacketLen: superLen, QueueLen: 4})
	if err != nil {
		f.Fatal(err)
	}
	defer a.Close()
	s := a.(netif.SuperPacketLink)
	bufs, sizes := bufsFor(b, 8)
	f.Fuzz(func(t *testing.T, hdr []byte, seg uint16) {
		fr := make([]byte, 3000)
		copy(fr, hdr)
		_, _ = s.WriteGSO([][]byte{fr}, []int{int(seg)})
		for range 100 {
			n, err := b.Read(bufs, sizes)
			for i := range n {
				if sizes[i] > len(bufs[i]) {
					t.Fatalf("frame of %d bytes in a %d-byte buffer", sizes[i], len(bufs[i]))
				}
			}
			if n == 0 || err != nil {
				break
			}
		}
	})
}
