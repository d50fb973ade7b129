package afxdp

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/skylane/skylane/internal/fuzzbytes"
)

// Fuzz layout: 8 RX and 8 TX frames of 2 KiB, rings of 8 slots.
const (
	fzFrame  = 2048
	fzFrames = 8
	fzSlots  = 8
)

var fzLayout = layout{frameSize: fzFrame, rxEnd: fzFrames * fzFrame, end: 2 * fzFrames * fzFrame}

func fzUMEM() []byte {
	u := make([]byte, fzLayout.end)
	for i := range u {
		u[i] = byte(i*7 + i>>11)
	}
	return u
}

// fzAddr reads an address: mostly plausible ones (a frame plus an offset),
// sometimes anything.
func fzAddr(r *fuzzbytes.Reader) uint64 {
	switch r.Byte() % 4 {
	case 0:
		return r.U64()
	case 1:
		return uint64(r.Byte()%(2*fzFrames))*fzFrame + uint64(r.U32()%(fzFrame+64))
	default:
		return uint64(r.Byte()%(2*fzFrames)) * fzFrame
	}
}

// FuzzReadRX feeds readRX arbitrary ring memory and indices: it must never
// panic, copy only whole checked frames, and recycle only RX chunks.
func FuzzReadRX(f *testing.F) {
	valid := func(descs ...[2]uint64) []byte {
		b := []byte{0, 0, 0, 0, byte(len(descs)), 0, 0, 0, 8} // cons 0, prod len, 8 buffers
		for range 8 {
			b = append(b, 0xff) // buffers of 2040 bytes
		}
		b = append(b, 0) // mask: the ring's
		for _, d := range descs {
			b = append(b, 0) // raw address
			b = binary.LittleEndian.AppendUint64(b, d[0])
			b = binary.LittleEndian.AppendUint32(b, uint32(d[1]))
		}
		return b
	}
	f.Add(valid([2]uint64{256, 60}, [2]uint64{2048 + 256, 1514}, [2]uint64{7*2048 + 256, 64}))
	f.Add(valid([2]uint64{256, 0}, [2]uint64{8 * 2048, 60}, [2]uint64{2047, 2}, [2]uint64{^uint64(0), 60}))
	f.Add(valid([2]uint64{256, 4000}))                         // longer than its frame
	f.Add([]byte{0xfe, 0xff, 0xff, 0xff, 0x04, 0, 0, 0, 2})    // indices across the 2^32 wrap
	f.Add([]byte{0, 0, 0, 0, 0xff, 0xff, 0, 0, 3, 1, 2, 3, 1}) // producer far ahead; a mask wider than the ring
	f.Fuzz(func(t *testing.T, data []byte) {
		r := fuzzbytes.New(data)
		cons := r.U32()
		prod := cons + r.U32()
		bufs := make([][]byte, r.Byte()%12)
		for i := range bufs {
			bufs[i] = make([]byte, int(r.Byte())*8)
		}
		sizes := make([]int, len(bufs))
		mask := uint32(fzSlots - 1)
		if r.Byte()%8 == 1 {
			mask = 15 // wider than the descriptors there are
		}
		descs := make([]byte, fzSlots*rxDescLen)
		for i := range fzSlots {
			binary.NativeEndian.PutUint64(descs[i*rxDescLen:], fzAddr(r))
			binary.NativeEndian.PutUint32(descs[i*rxDescLen+8:], r.U32()%4096)
			binary.NativeEndian.PutUint32(descs[i*rxDescLen+12:], r.U32())
		}
		umem := fzUMEM()
		orig := bytes.Clone(descs)
		free := make([]uint64, int(r.Byte()%(fzFrames+1)), fzFrames)
		avail, ok := entries(prod, cons, fzSlots)
		if !ok && avail != 0 {
			t.Fatalf("entries(%d, %d) = %d, false", prod, cons, avail)
		}

		res := readRX(fzLayout, descs, mask, cons, avail, umem, bufs, sizes, &free)

		if !bytes.Equal(descs, orig) {
			t.Fatal("readRX wrote to the ring")
		}
		short := 0
		if res.short {
			short = 1
		}
		if res.filled > len(bufs) || uint32(res.consumed) > avail || res.filled+res.bad+short != res.consumed {
			t.Fatalf("result %+v with %d bufs, %d available", res, len(bufs), avail)
		}
		// Walk the consumed descriptors again: the filled ones must be
		// exactly the frames that passed the checks, in order.
		j := 0
		for i := 0; i < res.consumed; i++ {
			off := int((cons+uint32(i))&mask) * rxDescLen
			addr := binary.NativeEndian.Uint64(descs[off:])
			n := binary.NativeEndian.Uint32(descs[off+8:])
			_, frameOK, _ := fzLayout.checkRX(addr, n)
			if !frameOK {
				continue
			}
			if j == res.filled {
				if !res.short || i != res.consumed-1 || int(n) <= len(bufs[j]) {
					t.Fatalf("descriptor %d (%#x, %d) not delivered: %+v", i, addr, n, res)
				}
				break
			}
			if sizes[j] != int(n) || !bytes.Equal(bufs[j][:n], umem[addr:addr+uint64(n)]) {
				t.Fatalf("frame %d: got %d bytes, want %d from %#x", j, sizes[j], n, addr)
			}
			if addr+uint64(n) > fzLayout.chunk(addr)+fzFrame || addr >= fzLayout.rxEnd {
				t.Fatalf("frame %d at %#x+%d escapes its RX frame", j, addr, n)
			}
			j++
		}
		if j != res.filled {
			t.Fatalf("%d frames delivered, %d valid descriptors seen", res.filled, j)
		}
		if len(free) > fzFrames {
			t.Fatalf("free list grew to %d", len(free))
		}
		for _, c := range free[len(free)-min(len(free), res.consumed):] {
			if c >= fzLayout.rxEnd || c%fzFrame != 0 {
				t.Fatalf("recycled chunk %#x is not an RX frame", c)
			}
		}
	})
}

// FuzzReadComp feeds readComp arbitrary completion rings: only TX frame
// addresses may come back, and never more than there are frames.
func FuzzReadComp(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 3, 0, 0, 0, 0, 2, 8, 2, 9, 2, 15})
	f.Add([]byte{0, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 3, 0, 1, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x20, 0, 0, 0}) // producer too far ahead
	f.Fuzz(func(t *testing.T, data []byte) {
		r := fuzzbytes.New(data)
		cons := r.U32()
		prod := cons + r.U32()
		mask := uint32(fzSlots - 1)
		if r.Byte()%8 == 1 {
			mask = 15
		}
		descs := make([]byte, fzSlots*addrDescLen)
		for i := range fzSlots {
			binary.NativeEndian.PutUint64(descs[i*addrDescLen:], fzAddr(r))
		}
		free := make([]uint64, 0, fzFrames)
		avail, _ := entries(prod, cons, fzSlots)
		bad := readComp(fzLayout, descs, mask, cons, avail, &free)
		if bad < 0 || bad > int(avail) || len(free)+bad != int(avail) {
			t.Fatalf("%d available: %d bad, %d freed", avail, bad, len(free))
		}
		for _, a := range free {
			if a < fzLayout.rxEnd || a >= fzLayout.end || a%fzFrame != 0 {
				t.Fatalf("completion %#x accepted: not a TX frame", a)
			}
		}
	})
}

// TestEntries pins the index arithmetic, wrap included.
func TestEntries(t *testing.T) {
	for _, c := range []struct {
		prod, cons, size, n uint32
		ok                  bool
	}{
		{5, 3, 8, 2, true},
		{3, 3, 8, 0, true},
		{11, 3, 8, 8, true},
		{12, 3, 8, 0, false},         // more than the ring holds
		{2, 0xfffffffe, 8, 4, true},  // across the wrap
		{0xfffffffe, 2, 8, 0, false}, // consumer ahead of producer
	} {
		if n, ok := entries(c.prod, c.cons, c.size); n != c.n || ok != c.ok {
			t.Errorf("entries(%d, %d, %d) = %d, %v; want %d, %v", c.prod, c.cons, c.size, n, ok, c.n, c.ok)
		}
	}
}
