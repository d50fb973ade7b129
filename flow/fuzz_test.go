package flow

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/skylane/skylane/packet"
)

// fuzzSlots and fuzzPortFlows are small so that flows without a slot and
// ErrTooManyFlows happen often.
const (
	fuzzSlots     = 4
	fuzzPortFlows = 6
)

// fuzzKey builds a key from a small space, so that registrations collide,
// overlap and get refused: each byte picks a family, protocol, local and
// remote address and ports, including "any", foreign and multicast ones.
func fuzzKey(b0, b1 byte) packet.Key {
	v6 := b0&1 != 0
	locals := [...]netip.Addr{v4a, v4b, netip.MustParseAddr("198.18.0.77"), v4any, netip.MustParseAddr("224.0.0.9")}
	remotes := [...]netip.Addr{v4any, v4peer, netip.MustParseAddr("198.19.0.10")}
	if v6 {
		locals = [...]netip.Addr{v6a, v6b, netip.MustParseAddr("2001:db8::77"), v6any, netip.MustParseAddr("ff02::9")}
		remotes = [...]netip.Addr{v6any, v6peer, netip.MustParseAddr("2001:db8:1::10")}
	}
	protos := [...]uint8{packet.ProtoTCP, packet.ProtoUDP, packet.ProtoICMP, 47}
	if v6 {
		protos[2] = packet.ProtoICMPv6
	}
	ports := [...]uint16{0, 80, 81, 53}
	proto := protos[b0>>1&3]
	local := netip.AddrPortFrom(locals[int(b0>>3&7)%len(locals)], ports[b1&3])
	remote := netip.AddrPortFrom(remotes[int(b1>>2&3)%len(remotes)], ports[b1>>4&3])
	return packet.MakeKey(proto, local, remote)
}

func FuzzTable(f *testing.F) {
	f.Add([]byte{0, 0x08, 0x15, 1, 0, 0, 2, 0x08, 0x15})
	f.Add([]byte{0, 0x18, 0x01, 0, 0x18, 0x55, 2, 0x08, 0x55, 3, 1, 4})
	f.Add([]byte{0, 0x19, 0x21, 0, 0x01, 0x25, 2, 0x01, 0x25, 1, 0, 4, 2, 0x01, 0x25})
	f.Fuzz(fuzzTable)
}

// fuzzTable runs ops, a byte-coded sequence of register, teardown,
// TeardownPort and lookup operations, against tab and a model of its active
// entries, checking the invariants after each.
func fuzzTable(t *testing.T, ops []byte) {
	tab := newTable(t, Options{AdvisorySlots: fuzzSlots, MaxPortFlows: fuzzPortFlows, PortTaken: func(proto uint8, port uint16) bool {
		return proto == packet.ProtoUDP && port == 53
	}})
	var all []*Entry           // every entry ever registered
	model := map[*Entry]bool{} // the active ones
	var last packet.Key
	next := func() byte {
		if len(ops) == 0 {
			return 0
		}
		b := ops[0]
		ops = ops[1:]
		return b
	}
	for len(ops) > 0 {
		switch next() % 5 {
		case 0: // register
			port, b0, b1 := PortID(next()%3), next(), next()
			k, kind := fuzzKey(b0, b1), Kind(port%2)+Kind(b1>>6) // 0..4: includes invalid kinds
			if kind == Listener3 {
				k = k.Listener3()
			} else if kind == Listener2 {
				k = k.Listener2()
			}
			e, err := tab.Register(Request{Port: port, Key: k, Kind: kind})
			if err != nil {
				if e != nil {
					t.Fatalf("Register returned an entry and %v", err)
				}
				if errors.Is(err, ErrTooManyFlows) && countPort(model, port) != fuzzPortFlows {
					t.Fatalf("ErrTooManyFlows with %d flows on port %d", countPort(model, port), port)
				}
				continue
			}
			if !e.Active() || e.Key() != k || e.Kind() != kind || e.Port() != port || model[e] {
				t.Fatalf("Register(%d, %v, %v) = %+v", port, k, kind, e)
			}
			all = append(all, e)
			model[e] = true
		case 1: // teardown, possibly again
			if len(all) > 0 {
				e := all[int(next())%len(all)]
				tab.Teardown(e)
				delete(model, e)
			}
		case 2: // lookup
			last = fuzzKey(next(), next())
			checkLookup(t, tab, model, last)
		case 3: // teardown a port
			p := PortID(next() % 3)
			got := tab.TeardownPort(p)
			if len(got) != countPort(model, p) {
				t.Fatalf("TeardownPort(%d) = %d entries, model has %d", p, len(got), countPort(model, p))
			}
			for _, e := range got {
				if !model[e] || e.Port() != p || e.Active() {
					t.Fatalf("TeardownPort(%d) returned %+v", p, e)
				}
				delete(model, e)
			}
		case 4: // repeat the last lookup: the cache path
			checkLookup(t, tab, model, last)
		}
		checkInvariants(t, tab, model)
	}
}

func countPort(model map[*Entry]bool, p PortID) int {
	n := 0
	for e := range model {
		if e.Port() == p {
			n++
		}
	}
	return n
}

// checkLookup compares Lookup with a linear search of the model.
func checkLookup(t *testing.T, tab *Table, model map[*Entry]bool, k packet.Key) {
	t.Helper()
	var want *Entry
	for _, mk := range [3]packet.Key{k, k.Listener3(), k.Listener2()} {
		for e := range model {
			if e.Key() == mk {
				want = e
				break
			}
		}
		if want != nil {
			break
		}
	}
	// LookupBatch answers as Lookup does, for repeated and other keys.
	keys := []packet.Key{k, k, k.Reverse(), k.Listener3(), k}
	batch := make([]*Entry, len(keys))
	tab.LookupBatch(keys, batch)
	for i := range keys {
		if one := lookup(tab, keys[i]); batch[i] != one {
			t.Fatalf("LookupBatch[%d] (%v) = %v, Lookup says %v", i, keys[i], batch[i], one)
		}
	}
	got := lookup(tab, k)
	if got != want {
		t.Fatalf("Lookup(%v) = %v, model says %v", k, got, want)
	}
	if got != nil && (!got.Active() || (got.Key() != k && got.Key() != k.Listener3() && got.Key() != k.Listener2())) {
		t.Fatalf("Lookup(%v) = %+v: torn down or outside the masks", k, got)
	}
}

func checkInvariants(t *testing.T, tab *Table, model map[*Entry]bool) {
	t.Helper()
	if tab.Len() != len(model) {
		t.Fatalf("Len = %d, model has %d", tab.Len(), len(model))
	}
	tokens := map[uint32]bool{}
	type slot struct {
		p PortID
		i uint32
	}
	slots := map[slot]bool{}
	owners := map[protoPort]PortID{}
	for e := range model {
		if !e.Active() || tab.ByToken(e.Token()) != e || e.Token() == 0 || tokens[e.Token()] {
			t.Fatalf("%v: inactive, or token %d lost or repeated", e.Key(), e.Token())
		}
		tokens[e.Token()] = true
		s := slot{e.Port(), e.AdvisoryIndex()}
		if e.AdvisoryIndex() == NoAdvisory {
			s.i = uint32(len(slots)) + fuzzSlots // a fresh key: flows without a slot may be many
		} else if e.AdvisoryIndex() >= fuzzSlots || slots[s] {
			t.Fatalf("%v: advisory index %d out of range or repeated", e.Key(), e.AdvisoryIndex())
		}
		slots[s] = true
		pp := protoPort{e.Key().Proto, e.Key().LocalPort}
		if o, ok := owners[pp]; ok && o != e.Port() {
			t.Fatalf("proto %d port %d held by ports %d and %d", pp.proto, pp.port, o, e.Port())
		}
		owners[pp] = e.Port()
		if err := checkKey(e.Key(), e.Kind()); err != nil {
			t.Fatalf("%v registered as %v: %v", e.Key(), e.Kind(), err)
		}
		if pp.proto == packet.ProtoUDP && pp.port == 53 {
			t.Fatalf("%v: port held by a kernel socket", e.Key())
		}
		if e.Kind() == Listener3 {
			if l2 := tab.find(e.Key().Listener2()); l2 != nil {
				t.Fatalf("listeners %v and %v overlap", e.Key(), l2.Key())
			}
		}
	}
	n := 0
	tab.ForEach(func(e *Entry) bool {
		if !model[e] {
			t.Fatalf("ForEach visits %v, not in the model", e.Key())
		}
		n++
		return true
	})
	if n != len(model) {
		t.Fatalf("ForEach visited %d, model has %d", n, len(model))
	}
}
