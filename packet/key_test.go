package packet

import (
	"fmt"
	"math"
	"math/bits"
	"net/netip"
	"testing"
	"unsafe"

	"github.com/gopacket/gopacket/layers"
)

func parseCase(t *testing.T, name string) *Parsed {
	t.Helper()
	for _, c := range acceptCases(t) {
		if c.name == name {
			var p Parsed
			if err := Parse(c.pkt, c.link, &p); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			return &p
		}
	}
	t.Fatalf("no case %q", name)
	return nil
}

func TestKeys(t *testing.T) {
	for _, c := range []struct {
		pkt    string
		rx, tx string // String of RxKey and TxKey
		l3, l2 string // String of RxKey().Listener3() and Listener2()
	}{
		{"ipv4_tcp",
			"tcp4 local=198.18.0.2:80 remote=198.18.0.1:40000", "tcp4 local=198.18.0.1:40000 remote=198.18.0.2:80",
			"tcp4 local=198.18.0.2:80 remote=*:0", "tcp4 local=*:80 remote=*:0"},
		{"ipv6_udp",
			"udp6 local=[2001:db8::2]:53 remote=[2001:db8::1]:40000", "udp6 local=[2001:db8::1]:40000 remote=[2001:db8::2]:53",
			"udp6 local=[2001:db8::2]:53 remote=*:0", "udp6 local=*:53 remote=*:0"},
		// The echo identifier is the local port, the remote port is 0.
		{"ipv4_icmp_echo_request",
			"icmp4 local=198.18.0.2:16962 remote=198.18.0.1:0", "icmp4 local=198.18.0.1:16962 remote=198.18.0.2:0",
			"icmp4 local=198.18.0.2:16962 remote=*:0", "icmp4 local=*:16962 remote=*:0"},
		{"ipv6_icmpv6_echo_reply",
			"icmp6 local=[2001:db8::2]:16962 remote=[2001:db8::1]:0", "icmp6 local=[2001:db8::1]:16962 remote=[2001:db8::2]:0",
			"icmp6 local=[2001:db8::2]:16962 remote=*:0", "icmp6 local=*:16962 remote=*:0"},
		// No ports: GRE, a later fragment.
		{"ipv4_gre",
			"proto47/4 local=198.18.0.2:0 remote=198.18.0.1:0", "proto47/4 local=198.18.0.1:0 remote=198.18.0.2:0",
			"proto47/4 local=198.18.0.2:0 remote=*:0", "proto47/4 local=*:0 remote=*:0"},
		{"ipv6_hbh_later_fragment",
			"udp6 local=[2001:db8::2]:0 remote=[2001:db8::1]:0", "udp6 local=[2001:db8::1]:0 remote=[2001:db8::2]:0",
			"udp6 local=[2001:db8::2]:0 remote=*:0", "udp6 local=*:0 remote=*:0"},
	} {
		p := parseCase(t, c.pkt)
		rx, tx := p.RxKey(), p.TxKey()
		for _, g := range []struct{ got, want string }{
			{rx.String(), c.rx}, {tx.String(), c.tx}, {rx.Listener3().String(), c.l3}, {rx.Listener2().String(), c.l2},
		} {
			if g.got != g.want {
				t.Errorf("%s: got %q, want %q", c.pkt, g.got, g.want)
			}
		}
		if rx.Reverse() != tx || tx.Reverse() != rx {
			t.Errorf("%s: Reverse does not swap RxKey and TxKey", c.pkt)
		}
	}
}

// TestKeyCascade looks packets up the way the flowswitch does: 5-tuple,
// then 3-tuple, then 2-tuple, with keys from MakeKey as map keys.
func TestKeyCascade(t *testing.T) {
	ap := netip.MustParseAddrPort
	flows := map[Key]string{
		MakeKey(ProtoTCP, ap("198.18.0.2:80"), ap("198.18.0.1:40000")):            "connected",
		MakeKey(ProtoTCP, ap("198.18.0.2:80"), netip.AddrPort{}):                  "listener on 198.18.0.2",
		MakeKey(ProtoTCP, ap("0.0.0.0:443"), netip.AddrPort{}).Listener2():        "listener on any v4",
		MakeKey(ProtoUDP, ap("[::]:53"), netip.AddrPort{}):                        "udp6 listener on any",
		MakeKey(ProtoICMP, ap("198.18.0.2:16962"), ap("198.18.0.1:999")):          "ping",
		MakeKey(ProtoTCP, ap("[::ffff:198.18.0.2]:8080"), ap("198.18.0.1:40000")): "mapped is v4",
	}
	lookup := func(k Key) string {
		for _, m := range []Key{k, k.Listener3(), k.Listener2()} {
			if f, ok := flows[m]; ok {
				return f
			}
		}
		return "host"
	}
	for _, c := range []struct {
		k    Key
		want string
	}{
		{parseCase(t, "ipv4_tcp").RxKey(), "connected"},
		{MakeKey(ProtoTCP, ap("198.18.0.2:80"), ap("198.18.0.9:1234")), "listener on 198.18.0.2"},
		{MakeKey(ProtoTCP, ap("198.18.0.7:443"), ap("198.18.0.9:1234")), "listener on any v4"},
		{MakeKey(ProtoTCP, ap("[2001:db8::2]:443"), ap("[2001:db8::1]:1234")), "host"}, // the listener is v4 only
		{parseCase(t, "ipv6_udp").RxKey(), "udp6 listener on any"},
		{parseCase(t, "ipv4_icmp_echo_request").RxKey(), "ping"},
		{MakeKey(ProtoTCP, ap("198.18.0.2:8080"), ap("198.18.0.1:40000")), "mapped is v4"},
		{MakeKey(ProtoUDP, ap("198.18.0.2:80"), ap("198.18.0.1:40000")), "host"},
	} {
		if got := lookup(c.k); got != c.want {
			t.Errorf("lookup(%v) = %q, want %q", c.k, got, c.want)
		}
	}
}

func TestMakeKey(t *testing.T) {
	k := MakeKey(ProtoUDP, netip.MustParseAddrPort("0.0.0.0:68"), netip.MustParseAddrPort("255.255.255.255:67"))
	if k.Version != 4 || k.Local != [16]byte{} || k.String() != "udp4 local=*:68 remote=255.255.255.255:67" {
		t.Errorf("unspecified local: %v %+v", k, k)
	}
	if got := k.LocalAddrPort(); got != netip.MustParseAddrPort("0.0.0.0:68") {
		t.Errorf("LocalAddrPort = %v", got)
	}
	// No local address: the version comes from the remote one.
	if k := MakeKey(ProtoTCP, netip.AddrPort{}, netip.MustParseAddrPort("[2001:db8::1]:1")); k.Version != 6 {
		t.Errorf("version from remote: %v", k)
	}
	if k := MakeKey(ProtoTCP, netip.AddrPort{}, netip.AddrPort{}); k.Version != 0 || k != (Key{Proto: ProtoTCP}) {
		t.Errorf("no addresses: %+v", k)
	}
}

// TestKeyLayout pins the size and alignment the flow table relies on: 38
// bytes of fields, padded to 40 and 8-byte aligned so copies are whole words.
func TestKeyLayout(t *testing.T) {
	if s, a := unsafe.Sizeof(Key{}), unsafe.Alignof(Key{}); s != 40 || a != 8 {
		t.Errorf("sizeof(Key) = %d, alignof = %d, want 40, 8", s, a)
	}
}

// TestHashDistribution hashes keys that differ only in the remote port and
// the low byte of the remote address, the usual shape of a busy server's
// flows, and checks that low and high bits fill buckets evenly (chi-square),
// that no two of them collide, and that flipping one input bit flips about
// half the output bits.
func TestHashDistribution(t *testing.T) {
	const buckets = 1024
	var lo, hi [buckets]int
	seen := map[uint64]Key{}
	base := parseCase(t, "ipv4_tcp").RxKey()
	n := 0
	for a := range 16 {
		for port := range 4096 {
			k := base
			k.Remote[15] = byte(a)
			k.RemotePort = uint16(32768 + port)
			h := k.Hash()
			if o, dup := seen[h]; dup {
				t.Fatalf("%v and %v collide", o, k)
			}
			seen[h] = k
			lo[h%buckets]++
			hi[h>>(64-10)]++
			n++
		}
	}
	// For 1023 degrees of freedom the statistic has mean 1023 and standard
	// deviation sqrt(2*1023) ≈ 45; six deviations is a generous bound.
	limit := 1023 + 6*math.Sqrt(2*1023)
	for name, b := range map[string]*[buckets]int{"low bits": &lo, "high bits": &hi} {
		exp := float64(n) / buckets
		chi := 0.0
		for _, c := range b {
			d := float64(c) - exp
			chi += d * d / exp
		}
		if chi > limit {
			t.Errorf("%s: chi-square %.0f > %.0f", name, chi, limit)
		}
	}
	// Avalanche over every input bit of a few keys, with a fixed seed.
	flips, total := 0, 0
	for _, k := range []Key{base, parseCase(t, "ipv6_udp").RxKey(), {}} {
		b := (*[38]byte)(unsafe.Pointer(&k)) // the fields, not the padding
		h0 := k.HashSeed(1)
		for i := range len(b) * 8 {
			b[i/8] ^= 1 << (i % 8)
			flips += bits.OnesCount64(h0 ^ k.HashSeed(1))
			total++
			b[i/8] ^= 1 << (i % 8)
		}
	}
	if avg := float64(flips) / float64(total); avg < 30 || avg > 34 {
		t.Errorf("one input bit flips %.1f output bits on average, want about 32", avg)
	}
}

func TestHashSeed(t *testing.T) {
	k := parseCase(t, "ipv4_tcp").RxKey()
	if k.HashSeed(1) != k.HashSeed(1) || k.HashSeed(1) == k.HashSeed(2) {
		t.Error("HashSeed is not a deterministic function of the seed")
	}
	if k.Hash() != k.HashSeed(hashSeed) {
		t.Error("Hash does not use the process seed")
	}
	if n := testing.AllocsPerRun(100, func() { _ = k.Hash() }); n != 0 {
		t.Errorf("Hash allocates %v times", n)
	}
	_ = layers.LayerTypeIPv4
}

// TestKeyEqual checks Equal against == on keys that differ in exactly one
// bit, in every bit of every field, and on equal keys with nonzero fields.
func TestKeyEqual(t *testing.T) {
	base := MakeKey(ProtoTCP, netip.MustParseAddrPort("[2001:db8::1]:443"), netip.MustParseAddrPort("[2001:db8::2]:50000"))
	if c := base; !base.Equal(&c) {
		t.Fatal("a key is not Equal to its copy")
	}
	flip := func(name string, f func(k *Key)) {
		k := base
		f(&k)
		if k.Equal(&base) != (k == base) || base.Equal(&k) != (k == base) {
			t.Errorf("%s: Equal = %v, == says %v", name, k.Equal(&base), k == base)
		}
	}
	for i := range 16 * 8 {
		flip(fmt.Sprintf("local bit %d", i), func(k *Key) { k.Local[i/8] ^= 1 << (i % 8) })
		flip(fmt.Sprintf("remote bit %d", i), func(k *Key) { k.Remote[i/8] ^= 1 << (i % 8) })
	}
	for i := range 16 {
		flip(fmt.Sprintf("local port bit %d", i), func(k *Key) { k.LocalPort ^= 1 << i })
		flip(fmt.Sprintf("remote port bit %d", i), func(k *Key) { k.RemotePort ^= 1 << i })
	}
	for i := range 8 {
		flip(fmt.Sprintf("version bit %d", i), func(k *Key) { k.Version ^= 1 << i })
		flip(fmt.Sprintf("proto bit %d", i), func(k *Key) { k.Proto ^= 1 << i })
	}
}
