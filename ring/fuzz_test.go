package ring_test

import (
	"encoding/binary"
	"errors"
	"github.com/skylane/skylane/internal/fuzzbytes"
	"testing"

	"github.com/skylane/skylane/ring"
)

// Peer operations for FuzzConsumer (the fuzz input plays the producer).
const (
	cPeerProdDelta = iota // producer word += int8
	cPeerProdAny          // producer word = any uint32
	cPeerSlot             // any 8 bytes into any slot
	cPeerConsWord         // scribble over the consumer's own word
	cPeek
	cDequeue
	cRelease
	cWakeup
	cPeerPFlags // producer's flags word = any uint32
	cNumOps
)

// FuzzConsumer feeds the consumer arbitrary producer behaviour and checks it
// against a model: it never panics, never reports more than size (or more
// than asked), accepts a producer index only when it is ahead of what it
// saw before and at most size ahead of the consumer, and once it refused one
// it refuses everything.
func FuzzConsumer(f *testing.F) {
	f.Add(uint8(2), uint32(0), []byte{cPeerProdDelta, 3, cPeek, 8, cRelease, 2, cDequeue, 5})
	f.Add(uint8(3), uint32(0xFFFFFFFE), []byte{cPeerProdDelta, 16, cDequeue, 20, cPeerProdDelta, 17, cPeek, 1, cPeek, 40})
	f.Add(uint8(0), uint32(5), []byte{cPeerProdDelta, 2, cPeek, 2, cPeerProdDelta, 0xFF, cPeek, 3, cDequeue, 1})
	f.Add(uint8(1), uint32(0), []byte{cPeerSlot, 1, 1, 2, 3, 4, 5, 6, 7, 8, cPeerProdAny, 2, 0, 0, 0, cDequeue, 4})
	f.Add(uint8(4), uint32(1<<31), []byte{cPeerConsWord, 9, 9, 9, 9, cPeerProdDelta, 1, cDequeue, 1, cWakeup, 1})
	f.Add(uint8(2), uint32(0), []byte{cPeerProdAny, 0xFF, 0xFF, 0xFF, 0xFF, cPeek, 1, cPeek, 1})
	f.Add(uint8(1), uint32(0), []byte{cPeerPFlags, 0xFE, 0xFF, 0xFF, 0xFF, cPeerProdDelta, 2, cDequeue, 2, cPeerPFlags, 1, 0, 0, 0x80, cRelease, 0})
	f.Fuzz(func(t *testing.T, sizeLog uint8, start uint32, ops []byte) {
		size := 2 << (sizeLog % 6) // 2..64
		mem := alignedMem(ring.MemSize(size))
		if err := ring.Init(mem, size); err != nil {
			t.Fatal(err)
		}
		putWord(mem, offProd, start)
		putWord(mem, offCons, start)
		c, err := ring.NewConsumer(mem, size)
		if err != nil {
			t.Fatal(err)
		}
		usz := uint32(size)
		mCons, mProd := start, start // model: released index, last accepted producer index
		mBad := false
		peeked := 0 // slots the last Peek made readable and not yet released
		out := make([]ring.Slot, 2*size+2)
		r := fuzzbytes.New(ops)
		// look models Peek(n): returns what it must return.
		look := func(n int) (int, bool) {
			if mBad {
				return 0, false
			}
			avail := mProd - mCons
			if avail < uint32(n) {
				p := word(mem, offProd)
				if p-mCons > usz || p-mProd > p-mCons {
					mBad = true
					return 0, false
				}
				mProd, avail = p, p-mCons
			}
			return int(min(avail, uint32(n))), true
		}
		for steps := 0; !r.Done() && steps < 1000; steps++ {
			switch r.Byte() % cNumOps {
			case cPeerProdDelta:
				putWord(mem, offProd, word(mem, offProd)+uint32(int32(int8(r.Byte()))))
			case cPeerProdAny:
				putWord(mem, offProd, r.U32())
			case cPeerSlot:
				pos := int(r.Byte()) % size
				binary.LittleEndian.PutUint64(mem[offSlots+8*pos:], r.U64())
			case cPeerConsWord:
				putWord(mem, offCons, r.U32())
			case cPeek:
				n := int(r.Byte()) % (2*size + 2)
				want, ok := look(n)
				got, err := c.Peek(n)
				checkResult(t, "Peek", n, size, got, err, want, ok)
				if !ok {
					peeked = 0
					continue
				}
				peeked = got
				for i := range got {
					if s, w := c.At(i), slotAt(mem, int((mCons+uint32(i))&(usz-1))); s != w {
						t.Fatalf("At(%d) = %+v, memory holds %+v", i, s, w)
					}
				}
			case cDequeue:
				n := int(r.Byte()) % (2*size + 2)
				want, ok := look(n)
				before := make([]ring.Slot, want)
				for i := range want {
					before[i] = slotAt(mem, int((mCons+uint32(i))&(usz-1)))
				}
				got, err := c.Dequeue(out[:n])
				checkResult(t, "Dequeue", n, size, got, err, want, ok)
				for i := range got {
					if out[i] != before[i] {
						t.Fatalf("Dequeue slot %d = %+v, memory held %+v", i, out[i], before[i])
					}
				}
				mCons += uint32(got)
				peeked = 0
				if ok && word(mem, offCons) != mCons && got > 0 {
					t.Fatalf("cons word %#x after Dequeue, want %#x", word(mem, offCons), mCons)
				}
			case cRelease:
				k := int(r.Byte()) % (peeked + 1)
				c.Release(k)
				mCons += uint32(k)
				peeked -= k
				if word(mem, offCons) != mCons {
					t.Fatalf("cons word %#x after Release(%d), want %#x", word(mem, offCons), k, mCons)
				}
			case cWakeup:
				on := r.Byte()&1 == 1
				c.SetNeedWakeup(on)
				if (word(mem, offFlags) == ring.FlagNeedWakeup) != on {
					t.Fatalf("flags word %#x after SetNeedWakeup(%v)", word(mem, offFlags), on)
				}
			case cPeerPFlags:
				v := r.U32()
				putWord(mem, offPFlags, v)
				if c.NeedsRoom() != (v&ring.FlagNeedRoom != 0) {
					t.Fatalf("NeedsRoom = %v with producer flags %#x", c.NeedsRoom(), v)
				}
			}
			if (c.Err() != nil) != mBad {
				t.Fatalf("Err() = %v, model corrupt = %v", c.Err(), mBad)
			}
			if c.HasEntries() != (word(mem, offProd) != word(mem, offCons)) {
				t.Fatalf("HasEntries = %v with prod %#x, cons %#x", c.HasEntries(), word(mem, offProd), word(mem, offCons))
			}
		}
	})
}

func checkResult(t *testing.T, op string, n, size, got int, err error, want int, ok bool) {
	t.Helper()
	if got < 0 || got > size || got > n {
		t.Fatalf("%s(%d) returned %d slots on a ring of %d", op, n, got, size)
	}
	if !ok {
		if !errors.Is(err, ring.ErrCorrupt) || got != 0 {
			t.Fatalf("%s(%d) = %d, %v; want 0, ErrCorrupt", op, n, got, err)
		}
		return
	}
	if err != nil || got != want {
		t.Fatalf("%s(%d) = %d, %v; want %d, nil", op, n, got, err, want)
	}
}

// Peer operations for FuzzProducer (the fuzz input plays the consumer).
const (
	pPeerConsDelta = iota // consumer word += int8
	pPeerConsAny          // consumer word = any uint32
	pPeerFlags            // flags word = any uint32
	pPeerProdWord         // scribble over the producer's own word
	pReserve
	pCommit
	pEnqueue
	pRefresh
	pNeedRoom // SetNeedRoom(byte&1)
	pNumOps
)

// FuzzProducer feeds the producer arbitrary consumer behaviour and checks it
// against a model: it never panics, never offers more room than size (or
// than asked), accepts a consumer index only when it moved forward and not
// past what was committed, writes slots where and how the layout says, and
// once it refused an index it refuses everything.
func FuzzProducer(f *testing.F) {
	f.Add(uint8(2), uint32(0), []byte{pReserve, 8, pCommit, 3, pPeerConsDelta, 2, pReserve, 8, pCommit, 8, pRefresh})
	f.Add(uint8(3), uint32(0xFFFFFFFC), []byte{pEnqueue, 16, pPeerConsDelta, 10, pEnqueue, 16, pPeerConsDelta, 0xFE, pRefresh})
	f.Add(uint8(0), uint32(7), []byte{pEnqueue, 2, pPeerConsDelta, 3, pReserve, 2})
	f.Add(uint8(0), uint32(0), []byte{pEnqueue, 2, pNeedRoom, 1, pPeerConsDelta, 1, pReserve, 1, pNeedRoom, 0})
	f.Add(uint8(1), uint32(0), []byte{pPeerFlags, 1, 0, 0, 0, pEnqueue, 1, pPeerFlags, 2, 0, 0, 0, pEnqueue, 1})
	f.Add(uint8(4), uint32(1<<31), []byte{pPeerProdWord, 1, 2, 3, 4, pEnqueue, 3, pPeerConsAny, 1, 0, 0, 0x80, pRefresh})
	f.Fuzz(func(t *testing.T, sizeLog uint8, start uint32, ops []byte) {
		size := 2 << (sizeLog % 6) // 2..64
		mem := alignedMem(ring.MemSize(size))
		if err := ring.Init(mem, size); err != nil {
			t.Fatal(err)
		}
		putWord(mem, offProd, start)
		putWord(mem, offCons, start)
		p, err := ring.NewProducer(mem, size)
		if err != nil {
			t.Fatal(err)
		}
		usz := uint32(size)
		mProd, mCons := start, start // model: committed index, last accepted consumer index
		mBad := false
		reserved := 0
		seq := uint32(0)
		in := make([]ring.Slot, 2*size+2)
		r := fuzzbytes.New(ops)
		look := func(n int, always bool) (int, bool) {
			if mBad {
				return 0, false
			}
			free := usz - (mProd - mCons)
			if free < uint32(n) || always {
				c := word(mem, offCons)
				if c-mCons > mProd-mCons {
					mBad = true
					return 0, false
				}
				mCons, free = c, usz-(mProd-c)
			}
			return int(min(free, uint32(n))), true
		}
		checkSlots := func(k int) {
			for i := range k {
				pos := int((mProd + uint32(i)) & (usz - 1))
				if s := slotAt(mem, pos); s != seqSlot(seq+uint32(i)) {
					t.Fatalf("slot %d at position %d = %+v, want %+v", seq+uint32(i), pos, s, seqSlot(seq+uint32(i)))
				}
			}
		}
		for steps := 0; !r.Done() && steps < 1000; steps++ {
			switch r.Byte() % pNumOps {
			case pPeerConsDelta:
				putWord(mem, offCons, word(mem, offCons)+uint32(int32(int8(r.Byte()))))
			case pPeerConsAny:
				putWord(mem, offCons, r.U32())
			case pPeerFlags:
				v := r.U32()
				putWord(mem, offFlags, v)
				if p.NeedsWakeup() != (v&ring.FlagNeedWakeup != 0) {
					t.Fatalf("NeedsWakeup = %v with flags %#x", p.NeedsWakeup(), v)
				}
			case pPeerProdWord:
				putWord(mem, offProd, r.U32())
			case pReserve:
				n := int(r.Byte()) % (2*size + 2)
				want, ok := look(n, false)
				got, err := p.Reserve(n)
				checkResult(t, "Reserve", n, size, got, err, want, ok)
				reserved = got
			case pCommit:
				k := int(r.Byte()) % (reserved + 1)
				for i := range k {
					p.Set(i, seqSlot(seq+uint32(i)))
				}
				p.Commit(k)
				checkSlots(k)
				mProd += uint32(k)
				seq += uint32(k)
				reserved = 0
				if word(mem, offProd) != mProd {
					t.Fatalf("prod word %#x after Commit(%d), want %#x", word(mem, offProd), k, mProd)
				}
			case pEnqueue:
				n := int(r.Byte()) % (2*size + 2)
				for i := range n {
					in[i] = seqSlot(seq + uint32(i))
				}
				want, ok := look(n, false)
				got, err := p.Enqueue(in[:n])
				checkResult(t, "Enqueue", n, size, got, err, want, ok)
				checkSlots(got)
				mProd += uint32(got)
				seq += uint32(got)
				reserved = 0
				if got > 0 && word(mem, offProd) != mProd {
					t.Fatalf("prod word %#x after Enqueue, want %#x", word(mem, offProd), mProd)
				}
			case pNeedRoom:
				on := r.Byte()&1 == 1
				p.SetNeedRoom(on)
				if (word(mem, offPFlags) == ring.FlagNeedRoom) != on {
					t.Fatalf("producer flags word %#x after SetNeedRoom(%v)", word(mem, offPFlags), on)
				}
			case pRefresh:
				_, ok := look(0, true)
				err := p.Refresh()
				if ok != (err == nil) || !ok && !errors.Is(err, ring.ErrCorrupt) {
					t.Fatalf("Refresh = %v, model ok = %v", err, ok)
				}
			}
			if (p.Err() != nil) != mBad {
				t.Fatalf("Err() = %v, model corrupt = %v", p.Err(), mBad)
			}
			if p.HasRoom() != (word(mem, offProd)-word(mem, offCons) != usz) {
				t.Fatalf("HasRoom = %v with prod %#x, cons %#x, size %d", p.HasRoom(), word(mem, offProd), word(mem, offCons), size)
			}
			if pend := p.Pending(); !mBad && (pend < 0 || pend > size || pend != int(mProd-mCons)) {
				t.Fatalf("Pending = %d, model %d, size %d", pend, mProd-mCons, size)
			}
		}
	})
}
