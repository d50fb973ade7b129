package neigh

import (
	"bytes"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

var (
	macA = MAC{0x02, 0, 0, 0, 0, 0x0a}
	macB = MAC{0x02, 0, 0, 0, 0, 0x0b}
	ip4A = netip.MustParseAddr("198.18.0.1")
	ip4B = netip.MustParseAddr("198.18.0.2")
	ip6A = netip.MustParseAddr("2001:2::1")
	ip6B = netip.MustParseAddr("2001:2::2")
)

// gopacketARP builds an ARP frame with gopacket.
func gopacketARP(t testing.TB, op uint16, sMAC MAC, sIP netip.Addr, tMAC MAC, tIP netip.Addr, dst MAC) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{},
		&layers.Ethernet{SrcMAC: sMAC[:], DstMAC: dst[:], EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: op, SourceHwAddress: sMAC[:], SourceProtAddress: sIP.AsSlice(),
			DstHwAddress: tMAC[:], DstProtAddress: tIP.AsSlice()}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// gopacketNDP builds an NS or NA frame with gopacket, checksum computed.
func gopacketNDP(t testing.TB, typ uint8, src, dst, target netip.Addr, ethSrc, ethDst MAC, flags uint8, ll *MAC) []byte {
	t.Helper()
	ip := &layers.IPv6{Version: 6, HopLimit: 255, NextHeader: layers.IPProtocolICMPv6, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}
	_ = icmp.SetNetworkLayerForChecksum(ip)
	var msg gopacket.SerializableLayer
	if typ == TypeNS {
		ns := &layers.ICMPv6NeighborSolicitation{TargetAddress: target.AsSlice()}
		if ll != nil {
			ns.Options = layers.ICMPv6Options{{Type: layers.ICMPv6OptSourceAddress, Data: ll[:]}}
		}
		msg = ns
	} else {
		na := &layers.ICMPv6NeighborAdvertisement{TargetAddress: target.AsSlice(), Flags: flags}
		if ll != nil {
			na.Options = layers.ICMPv6Options{{Type: layers.ICMPv6OptTargetAddress, Data: ll[:]}}
		}
		msg = na
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: ethSrc[:], DstMAC: ethDst[:], EthernetType: layers.EthernetTypeIPv6}, ip, icmp, msg); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestARPAgainstGopacket: what PutARP writes, gopacket reads the same way,
// and what gopacket writes, ParseARP reads back.
func TestARPAgainstGopacket(t *testing.T) {
	a := ARP{EthDst: Broadcast, EthSrc: macA, Op: ARPRequest, SenderMAC: macA, SenderIP: ip4A, TargetIP: ip4B}
	b := make([]byte, ARPFrameLen)
	if n, err := PutARP(b, &a); n != ARPFrameLen || err != nil {
		t.Fatalf("PutARP: %d, %v", n, err)
	}
	// gopacket pads to the 60-byte Ethernet minimum; PutARP leaves that
	// to the NIC.
	if want := gopacketARP(t, ARPRequest, macA, ip4A, MAC{}, ip4B, Broadcast); !bytes.Equal(b, want[:ARPFrameLen]) {
		t.Fatalf("PutARP wrote\n% x\ngopacket writes\n% x", b, want)
	}
	p := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.Default)
	g, ok := p.Layer(layers.LayerTypeARP).(*layers.ARP)
	if !ok || g.Operation != ARPRequest || !bytes.Equal(g.SourceHwAddress, macA[:]) || !bytes.Equal(g.DstProtAddress, ip4B.AsSlice()) {
		t.Fatalf("gopacket read %+v", g)
	}

	var got ARP
	reply := gopacketARP(t, ARPReply, macB, ip4B, macA, ip4A, macA)
	if err := ParseARP(reply, &got); err != nil {
		t.Fatal(err)
	}
	want := ARP{EthDst: macA, EthSrc: macB, Op: ARPReply, SenderMAC: macB, SenderIP: ip4B, TargetMAC: macA, TargetIP: ip4A}
	if got != want {
		t.Fatalf("ParseARP\n%+v, want\n%+v", got, want)
	}
	for i := range ARPFrameLen { // reply has 18 bytes of padding after
		if err := ParseARP(reply[:i], &got); err == nil {
			t.Fatalf("accepted %d-byte truncation", i)
		}
	}
	bad := bytes.Clone(reply)
	bad[ethHdrLen+5] = 16 // protocol address size of IPv6
	if ParseARP(bad, &got) != ErrNotARP {
		t.Fatal("accepted a non-IPv4 ARP")
	}
}

// TestNDPAgainstGopacket: NS and NA frames from PutNDP are what gopacket
// builds, byte for byte (checksum included), and ParseNDP reads gopacket's.
func TestNDPAgainstGopacket(t *testing.T) {
	snm, snmMAC := SolicitedNode(ip6B)
	if snm != netip.MustParseAddr("ff02::1:ff00:2") || snmMAC != (MAC{0x33, 0x33, 0xff, 0, 0, 2}) {
		t.Fatalf("solicited-node %v %x", snm, snmMAC)
	}
	for _, tc := range []struct {
		name string
		m    NDP
	}{
		{"ns", NDP{EthDst: snmMAC, EthSrc: macA, Src: ip6A, Dst: snm, Type: TypeNS, Target: ip6B, LL: macA, HasLL: true}},
		{"ns-dad", NDP{EthDst: snmMAC, EthSrc: macA, Src: netip.IPv6Unspecified(), Dst: snm, Type: TypeNS, Target: ip6B}},
		{"na", NDP{EthDst: macA, EthSrc: macB, Src: ip6B, Dst: ip6A, Type: TypeNA, Flags: FlagSolicited | FlagOverride, Target: ip6B, LL: macB, HasLL: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := make([]byte, NDPFrameLen)
			n, err := PutNDP(b, &tc.m)
			if err != nil {
				t.Fatal(err)
			}
			var ll *MAC
			if tc.m.HasLL {
				ll = &tc.m.LL
			}
			want := gopacketNDP(t, tc.m.Type, tc.m.Src, tc.m.Dst, tc.m.Target, tc.m.EthSrc, tc.m.EthDst, tc.m.Flags, ll)
			if !bytes.Equal(b[:n], want) {
				t.Fatalf("PutNDP wrote\n% x\ngopacket writes\n% x", b[:n], want)
			}
			p := gopacket.NewPacket(b[:n], layers.LayerTypeEthernet, gopacket.Default)
			icmp := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
			_ = icmp.SetNetworkLayerForChecksum(p.NetworkLayer())
			if err, r := icmp.VerifyChecksum(); err != nil || !r.Valid {
				t.Fatalf("gopacket says checksum invalid (%v)", err)
			}
			var got NDP
			if err := ParseNDP(want, &got); err != nil {
				t.Fatal(err)
			}
			if got != tc.m {
				t.Fatalf("ParseNDP\n%+v, want\n%+v", got, tc.m)
			}
			for i := range want {
				if ParseNDP(want[:i], &got) == nil {
					t.Fatalf("accepted %d-byte truncation", i)
				}
			}
			for name, corrupt := range map[string]func([]byte){
				"hop limit": func(b []byte) { b[ethHdrLen+7] = 64 },
				"checksum":  func(b []byte) { b[ethHdrLen+ipv6HdrLen+2] ^= 1 },
				"code":      func(b []byte) { b[ethHdrLen+ipv6HdrLen+1] = 1 },
			} {
				c := bytes.Clone(want)
				corrupt(c)
				if ParseNDP(c, &got) == nil {
					t.Errorf("accepted bad %s", name)
				}
			}
		})
	}
}

// TestNoAllocs: parsers, builders and the responder path allocate nothing.
func TestNoAllocs(t *testing.T) {
	arp := gopacketARP(t, ARPRequest, macB, ip4B, MAC{}, ip4A, Broadcast)
	ns := gopacketNDP(t, TypeNS, ip6B, ip6A, ip6A, macB, macA, 0, &macB)
	r, err := New(Options{MAC: macA, Addrs: []netip.Addr{ip4A, ip6A}})
	if err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, NDPFrameLen)
	var a ARP
	var m NDP
	allocs := testing.AllocsPerRun(100, func() {
		_ = ParseARP(arp, &a)
		_, _ = PutARP(reply, &a)
		_ = ParseNDP(ns, &m)
		_, _ = PutNDP(reply, &m)
		_, _ = r.HandleFrame(arp, reply)
		_, _ = r.HandleFrame(ns, reply)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per run", allocs)
	}
}

func FuzzParseARP(f *testing.F) {
	f.Add(gopacketARP(f, ARPRequest, macB, ip4B, MAC{}, ip4A, Broadcast))
	f.Fuzz(func(t *testing.T, b []byte) {
		var a ARP
		if ParseARP(b, &a) != nil {
			return
		}
		// Whatever parses rebuilds into the same 42 bytes.
		out := make([]byte, ARPFrameLen)
		if n, err := PutARP(out, &a); err != nil || !bytes.Equal(out[:n], b[:n]) {
			t.Fatalf("round trip: %v\n% x\n% x", err, out[:n], b[:min(n, len(b))])
		}
	})
}

func FuzzParseNDP(f *testing.F) {
	f.Add(gopacketNDP(f, TypeNS, ip6B, ip6A, ip6A, macB, macA, 0, &macB))
	f.Add(gopacketNDP(f, TypeNA, ip6B, ip6A, ip6B, macB, macA, FlagSolicited, &macB))
	f.Add(gopacketNDP(f, TypeNS, netip.IPv6Unspecified(), ip6A, ip6A, macB, macA, 0, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		var m NDP
		if ParseNDP(b, &m) != nil {
			return
		}
		// gopacket agrees on type and target for what parses.
		p := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.Default)
		switch l := p.Layer(layers.LayerTypeICMPv6NeighborSolicitation).(type) {
		case *layers.ICMPv6NeighborSolicitation:
			if m.Type != TypeNS || !net.IP(m.Target.AsSlice()).Equal(l.TargetAddress) {
				t.Fatalf("gopacket NS target %v, ours %v type %d", l.TargetAddress, m.Target, m.Type)
			}
		}
		if l, ok := p.Layer(layers.LayerTypeICMPv6NeighborAdvertisement).(*layers.ICMPv6NeighborAdvertisement); ok {
			if m.Type != TypeNA || !net.IP(m.Target.AsSlice()).Equal(l.TargetAddress) {
				t.Fatalf("gopacket NA target %v, ours %v type %d", l.TargetAddress, m.Target, m.Type)
			}
		}
	})
}

// FuzzHandleFrame feeds arbitrary frames to a responder: no panic, and any
// reply is a frame the parsers accept.
func FuzzHandleFrame(f *testing.F) {
	f.Add(gopacketARP(f, ARPRequest, macB, ip4B, MAC{}, ip4A, Broadcast))
	f.Add(gopacketNDP(f, TypeNS, ip6B, ip6A, ip6A, macB, macA, 0, &macB))
	f.Fuzz(func(t *testing.T, b []byte) {
		now := fakeClock{}
		r, _ := New(Options{MAC: macA, Addrs: []netip.Addr{ip4A, ip6A}, Now: now.Now})
		reply := make([]byte, NDPFrameLen)
		n, _ := r.HandleFrame(b, reply)
		if n > 0 {
			var a ARP
			var m NDP
			if ParseARP(reply[:n], &a) != nil && ParseNDP(reply[:n], &m) != nil {
				t.Fatalf("reply does not parse: % x", reply[:n])
			}
		}
		bufs, sizes := [][]byte{make([]byte, 100)}, []int{0}
		r.Poll(bufs, sizes)
	})
}
