package ring_test

import (
	"encoding/binary"
	"testing"
	"unsafe"

	"github.com/skylane/skylane/internal/shm"
	"github.com/skylane/skylane/ring"
)

// Header offsets, written out again here on purpose: the layout is a
// contract with the other process, so the test must not borrow the
// package's constants.
const (
	offProd   = 0x000
	offPFlags = 0x004
	offCons   = 0x040
	offFlags  = 0x080
	offMagic  = 0x0C0
	offSize   = 0x0C4
	offSlots  = 0x100
)

// alignedMem returns n zeroed bytes starting on a 64-byte boundary, as
// shared memory would (mmap gives page alignment).
func alignedMem(n int) []byte {
	b := make([]byte, n+63)
	off := int((64 - uintptr(unsafe.Pointer(&b[0]))%64) % 64)
	return b[off : off+n : off+n]
}

// newRing initialises a ring of size slots in aligned memory and attaches
// both ends.
func newRing(t testing.TB, size int) ([]byte, *ring.Producer, *ring.Consumer) {
	t.Helper()
	mem := alignedMem(ring.MemSize(size))
	if err := ring.Init(mem, size); err != nil {
		t.Fatalf("Init(%d): %v", size, err)
	}
	p, err := ring.NewProducer(mem, size)
	if err != nil {
		t.Fatalf("NewProducer: %v", err)
	}
	c, err := ring.NewConsumer(mem, size)
	if err != nil {
		t.Fatalf("NewConsumer: %v", err)
	}
	return mem, p, c
}

func word(mem []byte, off int) uint32 { return binary.LittleEndian.Uint32(mem[off:]) }

func putWord(mem []byte, off int, v uint32) { binary.LittleEndian.PutUint32(mem[off:], v) }

// slotAt decodes slot position pos straight from the bytes.
func slotAt(mem []byte, pos int) ring.Slot {
	b := mem[offSlots+pos*8:]
	return ring.Slot{
		Index: binary.LittleEndian.Uint32(b[0:]),
		Len:   binary.LittleEndian.Uint16(b[4:]),
		Flags: binary.LittleEndian.Uint16(b[6:]),
	}
}

// seqSlot is the slot carrying sequence number n, with every field derived
// from n so that a slot from the wrong position or a torn slot shows.
func seqSlot(n uint32) ring.Slot {
	return ring.Slot{Index: n, Len: uint16(n*7 + 1), Flags: uint16(n >> 16)}
}

func TestLayoutBytes(t *testing.T) {
	const size = 8
	// Real shared memory, as the nexus makes it, with room for a canary
	// after the ring.
	r, err := shm.NewRegion(shm.RegionOptions{Name: "ring-layout", Size: shm.PageSize})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	m, err := shm.Map(r.FD(), 0, shm.PageSize, true)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmap()
	mem := m.Bytes()
	end := ring.MemSize(size)
	if end != 0x100+size*8 {
		t.Fatalf("MemSize(%d) = %#x, want %#x", size, end, 0x100+size*8)
	}
	for i := range mem {
		mem[i] = 0xEE // garbage Init must clear, and a canary past the end
	}
	if err := ring.Init(mem, size); err != nil {
		t.Fatal(err)
	}
	if mem[end] != 0xEE || mem[len(mem)-1] != 0xEE {
		t.Errorf("Init wrote past the ring's %d bytes", end)
	}

	want := make([]byte, end)
	// 0x0C0 magic: "SKYR" version 2, 0x534B5902 little-endian.
	copy(want[offMagic:], []byte{0x02, 0x59, 0x4B, 0x53})
	// 0x0C4 size: 8 slots.
	copy(want[offSize:], []byte{0x08, 0x00, 0x00, 0x00})
	// Everything else zero: indices 0, no flags, empty slots, padding.
	checkBytes(t, "after Init", mem[:end], want)

	p, err := ring.NewProducer(mem, size)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ring.NewConsumer(mem, size)
	if err != nil {
		t.Fatal(err)
	}
	in := []ring.Slot{
		{Index: 0x11223344, Len: 0x5566, Flags: 0x7788},
		{Index: 0xA0B0C0D0, Len: 0x0102, Flags: 0x8001},
		{Index: 7, Len: 1500, Flags: 0},
	}
	if n, err := p.Enqueue(in); n != 3 || err != nil {
		t.Fatalf("Enqueue = %d, %v", n, err)
	}
	// 0x000 prod: 3 slots committed.
	copy(want[offProd:], []byte{0x03, 0x00, 0x00, 0x00})
	// 0x100 slot 0: index 0x11223344, len 0x5566, flags 0x7788.
	copy(want[offSlots+0:], []byte{0x44, 0x33, 0x22, 0x11, 0x66, 0x55, 0x88, 0x77})
	// 0x108 slot 1: index 0xA0B0C0D0, len 0x0102, flags 0x8001.
	copy(want[offSlots+8:], []byte{0xD0, 0xC0, 0xB0, 0xA0, 0x02, 0x01, 0x01, 0x80})
	// 0x110 slot 2: index 7, len 1500 (0x05DC), flags 0.
	copy(want[offSlots+16:], []byte{0x07, 0x00, 0x00, 0x00, 0xDC, 0x05, 0x00, 0x00})
	checkBytes(t, "after Enqueue 3", mem[:end], want)

	out := make([]ring.Slot, 2)
	if n, err := c.Dequeue(out); n != 2 || err != nil || out[0] != in[0] || out[1] != in[1] {
		t.Fatalf("Dequeue = %d, %v, %+v", n, err, out)
	}
	// 0x040 cons: 2 slots released.
	copy(want[offCons:], []byte{0x02, 0x00, 0x00, 0x00})
	c.SetNeedWakeup(true)
	// 0x080 flags: FlagNeedWakeup (bit 0).
	copy(want[offFlags:], []byte{0x01, 0x00, 0x00, 0x00})
	p.SetNeedRoom(true)
	// 0x004 producer flags: FlagNeedRoom (bit 0).
	copy(want[offPFlags:], []byte{0x01, 0x00, 0x00, 0x00})
	checkBytes(t, "after Dequeue 2, SetNeedWakeup and SetNeedRoom", mem[:end], want)

	// Seven more: prod goes 3 -> 10, so sequence numbers 8 and 9 land in
	// positions 0 and 1 again (index & 7).
	for i := range 7 {
		if n, err := p.Enqueue([]ring.Slot{seqSlot(uint32(3 + i))}); n != 1 || err != nil {
			t.Fatalf("Enqueue #%d = %d, %v", 3+i, n, err)
		}
	}
	// 0x000 prod: 10.
	copy(want[offProd:], []byte{0x0A, 0x00, 0x00, 0x00})
	for i := 3; i < 10; i++ {
		s := seqSlot(uint32(i))
		b := want[offSlots+(i&7)*8:]
		binary.LittleEndian.PutUint32(b[0:], s.Index)
		binary.LittleEndian.PutUint16(b[4:], s.Len)
		binary.LittleEndian.PutUint16(b[6:], s.Flags)
	}
	c.SetNeedWakeup(false)
	// 0x080 flags: cleared.
	copy(want[offFlags:], []byte{0x00, 0x00, 0x00, 0x00})
	p.SetNeedRoom(false)
	// 0x004 producer flags: cleared.
	copy(want[offPFlags:], []byte{0x00, 0x00, 0x00, 0x00})
	checkBytes(t, "after wrapping the slot array", mem[:end], want)
	if mem[end] != 0xEE {
		t.Errorf("the ring wrote past its %d bytes", end)
	}
}

func checkBytes(t *testing.T, when string, got, want []byte) {
	t.Helper()
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("%s: byte %#03x = %#02x, want %#02x", when, i, got[i], want[i])
		}
	}
}

func TestInitAndAttachRefuseBadArguments(t *testing.T) {
	mem := alignedMem(ring.MemSize(ring.MaxSize))
	for _, size := range []int{0, 1, 3, 6, 1000, ring.MaxSize * 2, -4} {
		if err := ring.Init(mem, size); err == nil {
			t.Errorf("Init(size %d) accepted", size)
		}
	}
	for _, size := range []int{ring.MinSize, 256, ring.MaxSize} {
		if err := ring.Init(mem, size); err != nil {
			t.Errorf("Init(size %d): %v", size, err)
		}
	}
	if err := ring.Init(mem[:ring.MemSize(64)-1], 64); err == nil {
		t.Error("Init accepted memory one byte short")
	}
	if err := ring.Init(mem, 64); err != nil {
		t.Fatal(err)
	}
	if _, err := ring.NewProducer(mem[:ring.MemSize(64)-1], 64); err == nil {
		t.Error("NewProducer accepted memory one byte short")
	}
	if _, err := ring.NewConsumer(mem, 63); err == nil {
		t.Error("NewConsumer accepted size 63")
	}
	odd := alignedMem(ring.MemSize(64) + 8)[8:]
	if _, err := ring.NewProducer(odd, 64); err == nil {
		t.Error("NewProducer accepted memory that is not 64-byte aligned")
	}
	if _, err := ring.NewConsumer(odd, 64); err == nil {
		t.Error("NewConsumer accepted memory that is not 64-byte aligned")
	}
}

// TestWraparound runs many laps with batch sizes that do not divide the ring,
// so every slot position and every split of a batch across the end is used.
func TestWraparound(t *testing.T) {
	for _, start := range []uint32{0, 1 << 31, 0xFFFFFFF0, 0xFFFFFFFF} {
		const size = 16
		mem := alignedMem(ring.MemSize(size))
		if err := ring.Init(mem, size); err != nil {
			t.Fatal(err)
		}
		// Start both indices near 2^32 so they wrap during the test.
		putWord(mem, offProd, start)
		putWord(mem, offCons, start)
		p, err := ring.NewProducer(mem, size)
		if err != nil {
			t.Fatal(err)
		}
		c, err := ring.NewConsumer(mem, size)
		if err != nil {
			t.Fatal(err)
		}
		var sent, got uint32
		in := make([]ring.Slot, size+3)
		out := make([]ring.Slot, size+5)
		for lap := 0; got < 1000*size; lap++ {
			nb := 1 + lap%(size+3) // 1..19, asking for more than fits too
			for i := range nb {
				in[i] = seqSlot(sent + uint32(i))
			}
			n, err := p.Enqueue(in[:nb])
			if err != nil {
				t.Fatalf("start %#x: Enqueue: %v", start, err)
			}
			if n > nb || p.Pending() > size {
				t.Fatalf("start %#x: Enqueue(%d) = %d, pending %d", start, nb, n, p.Pending())
			}
			sent += uint32(n)
			if w := word(mem, offProd); w != start+sent {
				t.Fatalf("start %#x: prod word %#x, want %#x", start, w, start+sent)
			}
			m, err := c.Dequeue(out[:1+lap%(size+5)])
			if err != nil {
				t.Fatalf("start %#x: Dequeue: %v", start, err)
			}
			for i := range m {
				if out[i] != seqSlot(got) {
					t.Fatalf("start %#x: slot %d = %+v, want %+v", start, got, out[i], seqSlot(got))
				}
				got++
			}
			if w := word(mem, offCons); w != start+got {
				t.Fatalf("start %#x: cons word %#x, want %#x", start, w, start+got)
			}
		}
		if start > 0xFFFFFF00 && word(mem, offCons) > 0x10000 {
			t.Errorf("start %#x: cons %#x did not wrap through 2^32", start, word(mem, offCons))
		}
	}
}

func TestBatchPartial(t *testing.T) {
	const size = 8
	mem, p, c := newRing(t, size)
	if n, err := p.Reserve(5); n != 5 || err != nil {
		t.Fatalf("Reserve(5) on empty = %d, %v", n, err)
	}
	for i := range 5 {
		p.Set(i, seqSlot(uint32(i)))
	}
	// Nothing is visible before Commit.
	if n, err := c.Peek(8); n != 0 || err != nil {
		t.Fatalf("Peek before Commit = %d, %v", n, err)
	}
	p.Commit(5)
	if n, err := p.Reserve(5); n != 3 || err != nil {
		t.Fatalf("Reserve(5) with 3 free = %d, %v", n, err)
	}
	for i := range 3 {
		p.Set(i, seqSlot(uint32(5+i)))
	}
	p.Commit(3)
	if n, err := p.Reserve(1); n != 0 || err != nil {
		t.Fatalf("Reserve(1) when full = %d, %v", n, err)
	}
	if n, err := p.Enqueue([]ring.Slot{{}, {}}); n != 0 || err != nil {
		t.Fatalf("Enqueue when full = %d, %v", n, err)
	}
	if w := word(mem, offProd); w != 8 {
		t.Fatalf("prod word %d after a refused Enqueue, want 8", w)
	}
	// Peek partial: never more than what is there, never more than asked.
	if n, err := c.Peek(3); n != 3 || err != nil {
		t.Fatalf("Peek(3) = %d, %v", n, err)
	}
	if n, err := c.Peek(100); n != size || err != nil {
		t.Fatalf("Peek(100) on a full ring = %d, %v; want %d", n, err, size)
	}
	for i := range 8 {
		if s := c.At(i); s != seqSlot(uint32(i)) {
			t.Fatalf("At(%d) = %+v", i, s)
		}
	}
	c.Release(2)
	if w := word(mem, offCons); w != 2 {
		t.Fatalf("cons word %d after Release(2)", w)
	}
	// The producer sees the room only when it looks again.
	if p.Pending() != 8 {
		t.Fatalf("Pending before refresh = %d, want the stale 8", p.Pending())
	}
	if n, err := p.Reserve(5); n != 2 || err != nil {
		t.Fatalf("Reserve(5) after 2 released = %d, %v", n, err)
	}
	if p.Pending() != 6 {
		t.Fatalf("Pending after Reserve = %d, want 6", p.Pending())
	}
	if n, err := c.Peek(100); n != 6 || err != nil {
		t.Fatalf("Peek(100) with 6 left = %d, %v", n, err)
	}
	if s := c.At(0); s != seqSlot(2) {
		t.Fatalf("At(0) after Release(2) = %+v", s)
	}
	out := make([]ring.Slot, 10)
	if n, err := c.Dequeue(out); n != 6 || err != nil {
		t.Fatalf("Dequeue(10) = %d, %v", n, err)
	}
	if n, err := c.Dequeue(out); n != 0 || err != nil {
		t.Fatalf("Dequeue on empty = %d, %v", n, err)
	}
	if err := p.Refresh(); err != nil || p.Pending() != 0 {
		t.Fatalf("Refresh = %v, Pending %d", err, p.Pending())
	}
	if p.Size() != size || c.Size() != size {
		t.Fatalf("Size = %d, %d", p.Size(), c.Size())
	}
}
