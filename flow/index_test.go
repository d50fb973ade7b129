package flow

import (
	"testing"

	"github.com/skylane/skylane/packet"
)

// FuzzIndex drives the index with hashes from a tiny space, so that probe
// runs collide, wrap around the end of the slots and are cut by removals,
// and checks it against a model after every operation: every entry in the
// model is found, every other key is not, and no entry sits behind an empty
// slot on its probe path (which backward-shift deletion must never leave).
// The index holds at most maxFuzzEntries: with hashes this colliding, probe
// runs are as long as the table, and the checks are quadratic.
func FuzzIndex(f *testing.F) {
	f.Add([]byte{0, 63, 0, 63, 0, 63, 1, 0, 0, 1})
	f.Add([]byte{0, 62, 0, 63, 0, 0, 0, 1, 1, 1, 1, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		const maxFuzzEntries = 600
		var x index
		x.init()
		var entries []*Entry
		model := map[*Entry]bool{}
		for len(ops) >= 2 {
			op, arg := ops[0], ops[1]
			ops = ops[2:]
			switch op % 3 {
			case 0, 1: // insert a new entry whose hash is arg's home slot (plus a high tag)
				if op%3 == 1 && len(entries) > 0 { // or remove one, possibly again
					e := entries[int(arg)%len(entries)]
					if got := x.remove(e, e.hash); got != model[e] {
						t.Fatalf("remove = %v, model says %v", got, model[e])
					}
					delete(model, e)
					break
				}
				if len(entries) >= maxFuzzEntries {
					break
				}
				e := &Entry{key: packet.Key{LocalPort: uint16(len(entries)), Version: 4}}
				e.hash = uint64(arg)%minIndexSlots | uint64(len(entries))<<32
				x.insert(e, e.hash)
				entries = append(entries, e)
				model[e] = true
			case 2: // grow beyond the initial size now and then
				for i := range min(int(arg%40), maxFuzzEntries-len(entries)) {
					e := &Entry{key: packet.Key{LocalPort: uint16(len(entries)), RemotePort: uint16(i + 1), Version: 6}}
					e.hash = uint64(i*7) % minIndexSlots
					x.insert(e, e.hash)
					entries = append(entries, e)
					model[e] = true
				}
			}
			if x.n != len(model) {
				t.Fatalf("n = %d, model has %d", x.n, len(model))
			}
			for _, e := range entries {
				got := x.get(&e.key, e.hash)
				if model[e] != (got == e) {
					t.Fatalf("get(%v) = %p, in model %v", e.key, got, model[e])
				}
			}
			for i, s := range x.slots {
				if s.e == nil {
					continue
				}
				if !model[s.e] {
					t.Fatalf("slot %d holds a removed entry", i)
				}
				for j := s.hash & x.mask; j != uint64(i); j = (j + 1) & x.mask {
					if x.slots[j].e == nil {
						t.Fatalf("slot %d: gap at %d on its probe path", i, j)
					}
				}
			}
		}
	})
}
