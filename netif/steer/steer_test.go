package steer_test

import (
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/steer"
	"github.com/skylane/skylane/packet"
	"golang.org/x/sys/unix"
)

// Documentation addresses (RFC 2544 benchmarking range, RFC 5180 for IPv6).
var (
	local4  = netip.MustParseAddr("198.18.0.1")
	remote4 = netip.MustParseAddr("198.18.0.2")
	other4  = netip.MustParseAddr("198.18.0.3")
	local6  = netip.MustParseAddr("2001:2::1")
	remote6 = netip.MustParseAddr("2001:2::2")
)

func TestKeyLayout(t *testing.T) {
	k := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(local4, 7000), netip.AddrPortFrom(remote4, 0x1234))
	m, err := steer.MakeKey(k)
	if err != nil {
		t.Fatal(err)
	}
	want := "" +
		"00000000000000000000ffffc6120001" + // local: ::ffff:198.18.0.1
		"00000000000000000000ffffc6120002" + // remote: ::ffff:198.18.0.2
		"1b58" + // local port 7000, network order
		"1234" + // remote port, network order
		"04" + // version
		"11" + // proto UDP
		"0000" // pad
	if got := hex.EncodeToString(m[:]); got != want {
		t.Errorf("key bytes\n got %s\nwant %s", got, want)
	}
	if back := m.PacketKey(); back != k {
		t.Errorf("PacketKey() = %v, want %v", back, k)
	}
	l2, err := steer.MakeKey(k.Listener2())
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(l2[:]); got != "0000000000000000000000000000000000000000000000000000000000000000"+"1b58"+"0000"+"0411"+"0000" {
		t.Errorf("listener2 key bytes %s", got)
	}
	for _, bad := range []packet.Key{
		{Version: 4, Proto: packet.ProtoICMP},
		{Version: 6, Proto: 47},
		{Version: 0, Proto: packet.ProtoUDP},
	} {
		if _, err := steer.MakeKey(bad); !errors.Is(err, netif.ErrNotSteerable) {
			t.Errorf("MakeKey(%v) = %v, want ErrNotSteerable", bad, err)
		}
	}
}

// frame describes a test frame.
type frame struct {
	vlan         bool
	v6           bool
	proto        uint8 // TCP or UDP (or ICMP)
	src, dst     netip.Addr
	sport, dport uint16
	ipOptions    bool // IPv4 with a 4-byte option (IHL 6)
	fragment     bool // IPv4 MF set
	hopByHop     bool // IPv6 with a hop-by-hop header before L4
}

var (
	macA = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	macB = net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
)

func (f frame) build(t testing.TB) []byte {
	t.Helper()
	var ls []gopacket.SerializableLayer
	eth := &layers.Ethernet{SrcMAC: macB, DstMAC: macA, EthernetType: layers.EthernetTypeIPv4}
	if f.v6 {
		eth.EthernetType = layers.EthernetTypeIPv6
	}
	ls = append(ls, eth)
	if f.vlan {
		ls = append(ls, &layers.Dot1Q{VLANIdentifier: 7, Type: eth.EthernetType})
		eth.EthernetType = layers.EthernetTypeDot1Q
	}
	var nl gopacket.NetworkLayer
	lp := layers.IPProtocol(f.proto)
	if f.v6 {
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: lp, SrcIP: f.src.AsSlice(), DstIP: f.dst.AsSlice()}
		nl = ip
		ls = append(ls, ip)
		if f.hopByHop {
			ip.NextHeader = layers.IPProtocolIPv6HopByHop
			hbh := &layers.IPv6HopByHop{}
			hbh.NextHeader = lp
			hbh.Options = []*layers.IPv6HopByHopOption{{OptionType: 1, OptionLength: 4, OptionData: []byte{0, 0, 0, 0}}}
			ls = append(ls, hbh)
		}
	} else {
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: lp, SrcIP: f.src.AsSlice(), DstIP: f.dst.AsSlice()}
		if f.ipOptions {
			ip.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
		}
		if f.fragment {
			ip.Flags = layers.IPv4MoreFragments
		}
		nl = ip
		ls = append(ls, ip)
	}
	switch f.proto {
	case packet.ProtoUDP:
		u := &layers.UDP{SrcPort: layers.UDPPort(f.sport), DstPort: layers.UDPPort(f.dport)}
		u.SetNetworkLayerForChecksum(nl)
		ls = append(ls, u)
	case packet.ProtoTCP:
		tc := &layers.TCP{SrcPort: layers.TCPPort(f.sport), DstPort: layers.TCPPort(f.dport), SYN: true, Window: 1000}
		tc.SetNetworkLayerForChecksum(nl)
		ls = append(ls, tc)
	case packet.ProtoICMP:
		ls = append(ls, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: 7})
	}
	ls = append(ls, gopacket.Payload("steer test payload"))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatalf("build frame: %v", err)
	}
	return buf.Bytes()
}

func arpFrame(t testing.TB) []byte {
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true},
		&layers.Ethernet{SrcMAC: macB, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPRequest, SourceHwAddress: macB, SourceProtAddress: remote4.AsSlice(),
			DstHwAddress: make([]byte, 6), DstProtAddress: local4.AsSlice()})
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type outcome int

const (
	hit outcome = iota
	miss
	unparsed
)

func (o outcome) String() string { return [...]string{"hit", "miss", "unparsed"}[o] }

// TestPrograms runs both programs on crafted frames (BPF_PROG_TEST_RUN)
// against a map holding one flow of each kind.
func TestPrograms(t *testing.T) {
	nettest.RequirePriv(t)
	flows, err := steer.NewFlows(steer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer flows.Close()
	ap := netip.AddrPortFrom
	registered := []packet.Key{
		// UDP 5-tuple: 198.18.0.1:7000 <- 198.18.0.2:5000.
		packet.MakeKey(packet.ProtoUDP, ap(local4, 7000), ap(remote4, 5000)),
		// TCP listener3 on 198.18.0.1:80.
		packet.MakeKey(packet.ProtoTCP, ap(local4, 80), netip.AddrPort{}),
		// UDP listener2 on port 53, IPv4 any address.
		packet.MakeKey(packet.ProtoUDP, ap(netip.IPv4Unspecified(), 53), netip.AddrPort{}),
		// IPv6 UDP listener3 on [2001:2::1]:7000.
		packet.MakeKey(packet.ProtoUDP, ap(local6, 7000), netip.AddrPort{}),
	}
	for _, k := range registered {
		if err := flows.Add(k); err != nil {
			t.Fatal(err)
		}
		if ok, err := flows.Contains(k); !ok || err != nil {
			t.Fatalf("Contains(%v) = %v, %v after Add", k, ok, err)
		}
	}
	single, frags, tc := loadPrograms(t, flows)

	udp, tcp := packet.ProtoUDP, packet.ProtoTCP
	cases := []struct {
		name string
		f    frame
		raw  []byte
		want outcome
	}{
		{"udp 5-tuple", frame{proto: udp, src: remote4, dst: local4, sport: 5000, dport: 7000}, nil, hit},
		{"udp 5-tuple, other remote port", frame{proto: udp, src: remote4, dst: local4, sport: 5001, dport: 7000}, nil, miss},
		{"udp 5-tuple, other remote addr", frame{proto: udp, src: other4, dst: local4, sport: 5000, dport: 7000}, nil, miss},
		{"udp 5-tuple behind a VLAN tag", frame{vlan: true, proto: udp, src: remote4, dst: local4, sport: 5000, dport: 7000}, nil, hit},
		{"udp 5-tuple with IPv4 options", frame{ipOptions: true, proto: udp, src: remote4, dst: local4, sport: 5000, dport: 7000}, nil, hit},
		{"udp 5-tuple, a first fragment", frame{fragment: true, proto: udp, src: remote4, dst: local4, sport: 5000, dport: 7000}, nil, hit},
		{"tcp listener3", frame{proto: tcp, src: other4, dst: local4, sport: 40000, dport: 80}, nil, hit},
		{"tcp listener3 with options", frame{ipOptions: true, proto: tcp, src: other4, dst: local4, sport: 40000, dport: 80}, nil, hit},
		{"tcp listener3, other local addr", frame{proto: tcp, src: remote4, dst: other4, sport: 40000, dport: 80}, nil, miss},
		{"udp port 80 is not tcp", frame{proto: udp, src: remote4, dst: local4, sport: 40000, dport: 80}, nil, miss},
		{"udp listener2, any local addr", frame{proto: udp, src: remote4, dst: other4, sport: 999, dport: 53}, nil, hit},
		{"tcp port 53 is not udp", frame{proto: tcp, src: remote4, dst: other4, sport: 999, dport: 53}, nil, miss},
		{"ipv6 udp listener3", frame{v6: true, proto: udp, src: remote6, dst: local6, sport: 1, dport: 7000}, nil, hit},
		{"ipv6 udp listener3 with VLAN", frame{vlan: true, v6: true, proto: udp, src: remote6, dst: local6, sport: 1, dport: 7000}, nil, hit},
		{"ipv6 listener2 is per version", frame{v6: true, proto: udp, src: remote6, dst: local6, sport: 1, dport: 53}, nil, miss},
		{"ipv6 hop-by-hop passes", frame{v6: true, hopByHop: true, proto: udp, src: remote6, dst: local6, sport: 1, dport: 7000}, nil, unparsed},
		{"icmp passes", frame{proto: packet.ProtoICMP, src: remote4, dst: local4}, nil, unparsed},
		{"arp passes", frame{}, arpFrame(t), unparsed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := c.raw
			if b == nil {
				b = c.f.build(t)
			}
			for _, xdp := range []*steer.XDP{single, frags} {
				checkRun(t, xdp, tc, b, c.want)
			}
		})
	}
	// Truncations of a matching frame: every prefix must pass (unparsed),
	// except those long enough to hold the ports.
	full := frame{ipOptions: true, proto: udp, src: remote4, dst: local4, sport: 5000, dport: 7000}.build(t)
	for n := 14; n < 14+24+4; n++ {
		for _, xdp := range []*steer.XDP{single, frags} {
			checkRun(t, xdp, tc, full[:n], unparsed)
		}
	}
	// An IHL below 5 is malformed.
	bad := frame{proto: udp, src: remote4, dst: local4, sport: 5000, dport: 7000}.build(t)
	bad[14] = 0x44
	for _, xdp := range []*steer.XDP{single, frags} {
		checkRun(t, xdp, tc, bad, unparsed)
	}

	// Remove stops steering.
	if err := flows.Remove(registered[0]); err != nil {
		t.Fatal(err)
	}
	if err := flows.Remove(registered[0]); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	for _, xdp := range []*steer.XDP{single, frags} {
		checkRun(t, xdp, tc, frame{proto: udp, src: remote4, dst: local4, sport: 5000, dport: 7000}.build(t), miss)
	}
}

// loadPrograms loads the programs over flows, closed when the test ends:
// the single-buffer XDP program, the frags-aware one (which must steer the
// same) and the TC program.
func loadPrograms(t *testing.T, flows *steer.Flows) (single, multi *steer.XDP, tc *steer.TC) {
	t.Helper()
	var err error
	if single, err = steer.LoadXDP(flows); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { single.Close() })
	if multi, err = steer.LoadXDPWith(flows, steer.XDPOptions{Frags: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { multi.Close() })
	if tc, err = steer.LoadTC(flows); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	return single, multi, tc
}

// checkRun runs both programs on b and checks the return code and which
// counter moved.
func checkRun(t *testing.T, xdp *steer.XDP, tc *steer.TC, b []byte, want outcome) {
	t.Helper()
	for _, p := range []struct {
		name     string
		run      func() (uint32, error)
		counters func() (steer.Counters, error)
		hitRet   uint32
		passRet  uint32
	}{
		// No socket is in the XSKMAP: a hit falls back to XDP_PASS and
		// counts HitNoSocket.
		{"xdp", func() (uint32, error) { return xdp.Program().Run(&ebpf.RunOptions{Data: b}) }, xdp.Counters, 2, 2},
		{"tc", func() (uint32, error) { return tc.Program().Run(&ebpf.RunOptions{Data: b}) }, tc.Counters, 2, 0xffffffff},
	} {
		before, err := p.counters()
		if err != nil {
			t.Fatal(err)
		}
		ret, err := p.run()
		if err != nil && p.name == "tc" && len(b) < 14+20 && errors.Is(err, unix.EINVAL) {
			// BPF_PROG_TEST_RUN refuses an IPv4 skb shorter than an
			// IPv4 header before the program runs.
			continue
		}
		if err != nil {
			t.Fatalf("%s: run on %d bytes: %v", p.name, len(b), err)
		}
		after, err := p.counters()
		if err != nil {
			t.Fatal(err)
		}
		var got outcome = -1
		switch {
		case after.Hit > before.Hit || after.HitNoSocket > before.HitNoSocket:
			got = hit
		case after.Miss > before.Miss:
			got = miss
		case after.Unparsed > before.Unparsed:
			got = unparsed
		}
		wantRet := p.passRet
		if want == hit {
			wantRet = p.hitRet
		}
		if got != want || ret != wantRet {
			t.Errorf("%s on %d-byte frame: %v, return %d; want %v, return %d", p.name, len(b), got, int32(ret), want, int32(wantRet))
		}
		if p.name == "xdp" && want == hit && after.HitNoSocket != before.HitNoSocket+1 {
			t.Errorf("xdp: hit without a socket counted %+v -> %+v", before, after)
		}
	}
}
