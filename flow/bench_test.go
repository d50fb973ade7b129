package flow

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/skylane/skylane/packet"
)

// BenchmarkLookup looks up connected flows in tables of 1, 1024 and 100000
// flows: "hit" repeats one key (the one-entry cache), "5tuple" cycles
// through all flows (cache misses; a 100000-flow table no longer fits the
// CPU caches), "listener" finds a Listener2 after two misses, and "naive"
// is a linear scan of the flows as a baseline, for the smaller tables.
func BenchmarkLookup(b *testing.B) {
	for _, n := range []int{1, 1024, 100000} {
		tab, _ := New(Options{LocalAddrs: []netip.Addr{v4a}, AdvisorySlots: n})
		keys := make([]packet.Key, n)
		for i := range keys {
			peer := netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})
			keys[i] = conn(tcp, v4a, 80, peer, uint16(1024+i%50000))
			mustRegister(b, tab, 1, keys[i], Connected)
		}
		// The listener shares the port's advisory slots; give it another.
		ltab, _ := New(Options{LocalAddrs: []netip.Addr{v4a}})
		mustRegister(b, ltab, 1, lis(tcp, v4any, 80), Listener2)

		run := func(name string, tab *Table, keys []packet.Key) {
			b.Run(fmt.Sprintf("flows=%d/%s", n, name), func(b *testing.B) {
				b.ReportAllocs()
				last := len(keys) - 1
				i := 0
				for b.Loop() {
					k := &keys[i]
					if i++; i > last {
						i = 0
					}
					if tab.Lookup(k) == nil {
						b.Fatal("miss")
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mlookups/s")
			})
		}
		run("hit", tab, keys[:1])
		run("5tuple", tab, keys)
		run("listener", ltab, keys)
		if n <= 1024 {
			b.Run(fmt.Sprintf("flows=%d/naive", n), func(b *testing.B) {
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					k := keys[i]
					if i++; i == len(keys) {
						i = 0
					}
					var found *Entry
					tab.ForEach(func(e *Entry) bool {
						if e.Key() == k {
							found = e
							return false
						}
						return true
					})
					if found == nil {
						b.Fatal("miss")
					}
				}
			})
		}
	}
}
