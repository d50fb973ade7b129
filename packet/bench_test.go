package packet

import (
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// BenchmarkParse measures Parse plus the RX key and its hash, the per-packet
// work of a flowswitch lookup, next to gopacket's DecodingLayerParser (the
// fastest gopacket path, which allocates nothing either but decodes options
// and copies nothing into a flow key) as a baseline.
func BenchmarkParse(b *testing.B) {
	for _, c := range []struct {
		name string
		pkt  []byte
	}{
		{"ipv4_tcp", tcp4Packet(b)},
		{"ipv6_udp", udp6Packet(b)},
	} {
		b.Run(c.name, func(b *testing.B) {
			var p Parsed
			b.ReportAllocs()
			b.SetBytes(int64(len(c.pkt)))
			for b.Loop() {
				if err := Parse(c.pkt, Ethernet, &p); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mpps")
		})
		b.Run(c.name+"/key", func(b *testing.B) {
			var p Parsed
			var sum uint64
			b.ReportAllocs()
			for b.Loop() {
				_ = Parse(c.pkt, Ethernet, &p)
				k := p.RxKey()
				sum += k.Hash()
			}
			_ = sum
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mpps")
		})
		b.Run(c.name+"/gopacket", func(b *testing.B) {
			var (
				eth     layers.Ethernet
				ip4     layers.IPv4
				ip6     layers.IPv6
				tcp     layers.TCP
				udp     layers.UDP
				payload gopacket.Payload
			)
			dlp := gopacket.NewDecodingLayerParser(layers.LayerTypeEthernet, &eth, &ip4, &ip6, &tcp, &udp, &payload)
			dlp.IgnoreUnsupported = true // the DNS payload of the UDP case
			decoded := make([]gopacket.LayerType, 0, 8)
			b.ReportAllocs()
			for b.Loop() {
				if err := dlp.DecodeLayers(c.pkt, &decoded); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mpps")
		})
	}
}

// BenchmarkKeyHash hashes 256 distinct keys in turn (changing a key in
// place would measure a store-forwarding stall, not the hash).
func BenchmarkKeyHash(b *testing.B) {
	var p Parsed
	if err := Parse(tcp4Packet(b), Ethernet, &p); err != nil {
		b.Fatal(err)
	}
	var keys [256]Key
	for i := range keys {
		keys[i] = p.RxKey()
		keys[i].RemotePort = uint16(i)
	}
	var sum uint64
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		sum += keys[i&255].Hash()
		i++
	}
	_ = sum
}
