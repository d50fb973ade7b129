package steer_test

import (
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif/steer"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
)

// TestProgramFragmentsAndICMP runs the programs on fragments and ICMP
// errors: a later fragment follows its first fragment (steered when the
// first hit a flow, passed before that and for unclaimed datagrams, and
// passed again once an unclaimed datagram reuses the identification), and
// an ICMP error is steered by the flow it quotes.
func TestProgramFragmentsAndICMP(t *testing.T) {
	nettest.RequirePriv(t)
	flows, err := steer.NewFlows(steer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer flows.Close()
	ap := netip.AddrPortFrom
	for _, k := range []packet.Key{
		packet.MakeKey(packet.ProtoUDP, ap(local4, 7000), ap(remote4, 5000)),
		packet.MakeKey(packet.ProtoTCP, ap(local6, 80), netip.AddrPort{}),
	} {
		if err := flows.Add(k); err != nil {
			t.Fatal(err)
		}
	}
	single, multi, tc := loadPrograms(t, flows)
	run := func(name string, b []byte, want outcome) {
		t.Helper()
		t.Run(name, func(t *testing.T) {
			for _, x := range []*steer.XDP{single, multi} {
				checkRun(t, x, tc, b, want)
			}
		})
	}

	dgram := func(src, dst netip.AddrPort, proto uint8, id uint16) []byte {
		f := packettest.Frame{Src: src, Dst: dst, Proto: proto, Size: 200, ID: id, NoDF: true}
		return f.Bytes()
	}
	for _, fam := range []struct {
		name          string
		claimed, free []byte
	}{
		{"v4", dgram(ap(remote4, 5000), ap(local4, 7000), packet.ProtoUDP, 1), dgram(ap(remote4, 5000), ap(local4, 7001), packet.ProtoUDP, 1)},
		{"v6", dgram(ap(remote6, 999), ap(local6, 80), packet.ProtoTCP, 0), dgram(ap(remote6, 999), ap(local6, 81), packet.ProtoTCP, 0)},
	} {
		fr := packettest.Fragment(fam.claimed, packet.Ethernet, 64, 1)
		free := packettest.Fragment(fam.free, packet.Ethernet, 64, 1) // the same identification
		if len(fr) < 3 || len(free) < 3 {
			t.Fatalf("%s: %d and %d fragments", fam.name, len(fr), len(free))
		}
		run(fam.name+" later fragment before its first", fr[2], unparsed)
		run(fam.name+" first fragment of a flow", fr[0], hit)
		run(fam.name+" later fragment after its first", fr[1], hit)
		run(fam.name+" last fragment after its first", fr[2], hit)
		run(fam.name+" first fragment of no flow, same id", free[0], miss)
		run(fam.name+" later fragment of no flow", free[1], unparsed)
		run(fam.name+" the claimed id is forgotten", fr[1], unparsed)
	}

	// ICMP errors quoting what the local side sent.
	sent4 := dgram(ap(local4, 7000), ap(remote4, 5000), packet.ProtoUDP, 9)[packettest.EthLen:]
	sent6 := dgram(ap(local6, 80), ap(remote6, 999), packet.ProtoTCP, 0)[packettest.EthLen:]
	router4, router6 := netip.MustParseAddr("198.18.9.9"), netip.MustParseAddr("2001:2::99")
	icmp4 := func(to netip.Addr, typ uint8, quote []byte) []byte {
		return serialize(t, &layers.Ethernet{SrcMAC: macB, DstMAC: macA, EthernetType: layers.EthernetTypeIPv4},
			&layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: router4.AsSlice(), DstIP: to.AsSlice()},
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, 4)}, gopacket.Payload(quote))
	}
	icmp6 := func(to netip.Addr, typ uint8, quote []byte) []byte {
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6, SrcIP: router6.AsSlice(), DstIP: to.AsSlice()}
		ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}
		ic.SetNetworkLayerForChecksum(ip)
		return serialize(t, &layers.Ethernet{SrcMAC: macB, DstMAC: macA, EthernetType: layers.EthernetTypeIPv6},
			ip, ic, gopacket.Payload(append([]byte{0, 0, 5, 0}, quote...)))
	}
	run("icmp frag needed", icmp4(local4, 3, sent4[:28]), hit)
	run("icmp time exceeded", icmp4(local4, 11, sent4[:28]), hit)
	run("icmp quote cut before the ports", icmp4(local4, 3, sent4[:22]), unparsed)
	run("icmp error for another address", icmp4(other4, 3, sent4[:28]), unparsed)
	run("icmp echo request", icmp4(local4, 8, sent4[:28]), unparsed)
	run("icmpv6 packet too big", icmp6(local6, 2, sent6[:48]), hit)
	run("icmpv6 quote of an unclaimed port", icmp6(local6, 1, dgram(ap(local6, 81), ap(remote6, 999), packet.ProtoTCP, 0)[packettest.EthLen:][:48]), miss)
	run("icmpv6 echo request", icmp6(local6, 128, sent6[:48]), unparsed)
}

func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
