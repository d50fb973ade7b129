package flow

import "github.com/skylane/skylane/packet"

// index is the table's packet-path lookup structure: an open-addressing
// hash table of the active entries, keyed by packet.Key.Hash, with linear
// probing and backward-shift deletion (no tombstones, so a lookup never
// walks over deleted slots).
//
// Why not a Go map: a map keyed by the 40-byte Key hashes it with the
// generic memory hash and compares keys with memequal, about 28 ns a hit at
// 1024 flows. Here a slot is 16 bytes (the full hash and the entry), four to
// a cache line, and the entry's key is compared only when the 64-bit hashes
// agree, so a hit costs one hash, one slot line and the entry's first line,
// which the caller reads next anyway.
//
// The load factor stays at most 1/2 (the table doubles past it), which keeps
// probe sequences short even for keys a sender chose: only registered flows
// are inserted, so a remote sender can aim only at misses, and the per
// process hash seed (packet.Key.Hash) keeps it from predicting slots.
type index struct {
	slots []slot // len a power of two, at least minIndexSlots
	mask  uint64 // len(slots) - 1
	n     int    // occupied slots
}

// slot is one index slot: empty when e is nil.
type slot struct {
	hash uint64
	e    *Entry
}

// minIndexSlots is the initial size: 64 slots are 1 KiB, small enough for a
// table with a handful of flows, large enough to skip the first resizes.
const minIndexSlots = 64

func (x *index) init() {
	x.slots = make([]slot, minIndexSlots)
	x.mask = minIndexSlots - 1
	x.n = 0
}

// get returns the entry with key k (hash h), or nil.
func (x *index) get(k *packet.Key, h uint64) *Entry {
	for i := h & x.mask; ; i = (i + 1) & x.mask {
		s := &x.slots[i]
		if s.e == nil {
			return nil
		}
		if s.hash == h && s.e.key.Equal(k) {
			return s.e
		}
	}
}

// probe returns the first entry on h's probe run whose hash is h, or nil:
// the entry get would find, unless another key has the same 64-bit hash.
func (x *index) probe(h uint64) *Entry {
	for i := h & x.mask; ; i = (i + 1) & x.mask {
		s := &x.slots[i]
		if s.e == nil || s.hash == h {
			return s.e
		}
	}
}

// insert adds e, whose key has hash h and is not in the index yet.
func (x *index) insert(e *Entry, h uint64) {
	if 2*(x.n+1) > len(x.slots) {
		x.grow()
	}
	x.place(slot{h, e})
	x.n++
}

func (x *index) place(s slot) {
	i := s.hash & x.mask
	for x.slots[i].e != nil {
		i = (i + 1) & x.mask
	}
	x.slots[i] = s
}

func (x *index) grow() {
	old := x.slots
	x.slots = make([]slot, 2*len(old))
	x.mask = uint64(len(x.slots) - 1)
	for _, s := range old {
		if s.e != nil {
			x.place(s)
		}
	}
}

// remove deletes e (hash h) if it is in the index, and reports whether it
// was. The slots after it in its probe run are shifted back, so every
// remaining entry stays reachable from its home slot without gaps.
func (x *index) remove(e *Entry, h uint64) bool {
	i := h & x.mask
	for x.slots[i].e != e {
		if x.slots[i].e == nil {
			return false
		}
		i = (i + 1) & x.mask
	}
	for j := (i + 1) & x.mask; x.slots[j].e != nil; j = (j + 1) & x.mask {
		// The entry at j may fill the hole at i unless its home slot lies
		// cyclically in (i, j]: then it would be found before reaching i.
		home := x.slots[j].hash & x.mask
		if (j-home)&x.mask >= (j-i)&x.mask {
			x.slots[i] = x.slots[j]
			i = j
		}
	}
	x.slots[i] = slot{}
	x.n--
	return true
}
