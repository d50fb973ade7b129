package afxdp

import (
	"bytes"
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"

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

// FuzzReadRX feeds readRX arbitrary ring memory, indices, options bits
// (XDP_PKT_CONTD chains) and limits: it must never panic, never write the
// ring, recycle only RX chunks, and deliver exactly what rxModel, a plain
// restatement of the framing rules over a decoded descriptor list, says.
func FuzzReadRX(f *testing.F) {
	valid := func(maxDescs byte, descs ...[3]uint64) []byte {
		b := []byte{0, 0, 0, 0, byte(len(descs)), 0, 0, 0, 8} // cons 0, prod len, 8 buffers
		for range 8 {
			b = append(b, 0xff) // buffers of 2040 bytes
		}
		b = append(b, 0, maxDescs, 0, 0) // mask: the ring's; maxDescs; stage 4 KiB; no skip
		for _, d := range descs {
			b = append(b, 0) // raw address
			b = binary.LittleEndian.AppendUint64(b, d[0])
			b = binary.LittleEndian.AppendUint32(b, uint32(d[1]))
			b = binary.LittleEndian.AppendUint32(b, uint32(d[2]))
		}
		return b
	}
	f.Add(valid(1, [3]uint64{256, 60, 0}, [3]uint64{2048 + 256, 1514, 0}, [3]uint64{7*2048 + 256, 64, 0}))
	f.Add(valid(1, [3]uint64{256, 0, 0}, [3]uint64{8 * 2048, 60, 0}, [3]uint64{2047, 2, 0}, [3]uint64{^uint64(0), 60, 0}))
	f.Add(valid(1, [3]uint64{256, 4000, 0})) // longer than its frame
	// A chain of three (a super packet for the stage), a chain cut by
	// the end of the ring, a chain too long.
	f.Add(valid(4, [3]uint64{256, 1792, 1}, [3]uint64{2048 + 256, 1792, 1}, [3]uint64{2*2048 + 256, 100, 0}, [3]uint64{3*2048 + 256, 1792, 1}))
	f.Add(valid(2, [3]uint64{256, 100, 1}, [3]uint64{2048 + 256, 100, 1}, [3]uint64{2*2048 + 256, 100, 1}, [3]uint64{3*2048 + 256, 100, 0}, [3]uint64{4*2048 + 256, 60, 0}))
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
		lim := rxLimits{maxFrame: 1514, maxDescs: int(r.Byte() % 6)}
		switch r.Byte() % 3 {
		case 0:
			lim.stage = make([]byte, 4096)
		case 1:
			lim.stage = make([]byte, 1000+int(r.Byte())*16)
		}
		skip := r.Byte()%4 == 1
		refuseOdd := r.Byte()%2 == 1 // keep refuses frames of odd length
		if refuseOdd {
			lim.keep = func(f []byte) bool { return len(f)%2 == 0 }
		}
		descs := make([]byte, fzSlots*rxDescLen)
		for i := range fzSlots {
			binary.NativeEndian.PutUint64(descs[i*rxDescLen:], fzAddr(r))
			binary.NativeEndian.PutUint32(descs[i*rxDescLen+8:], r.U32()%4096)
			binary.NativeEndian.PutUint32(descs[i*rxDescLen+12:], r.U32()%4)
		}
		umem := fzUMEM()
		orig := bytes.Clone(descs)
		free := make([]uint64, int(r.Byte()%(fzFrames+1)), fzFrames)
		avail, ok := entries(prod, cons, fzSlots)
		if !ok && avail != 0 {
			t.Fatalf("entries(%d, %d) = %d, false", prod, cons, avail)
		}
		var list []fzDesc
		for i := range avail {
			off := int((cons+i)&mask) * rxDescLen
			if off+rxDescLen > len(descs) {
				break
			}
			list = append(list, fzDesc{binary.NativeEndian.Uint64(descs[off:]), binary.NativeEndian.Uint32(descs[off+8:]), binary.NativeEndian.Uint32(descs[off+12:])&unix.XDP_PKT_CONTD != 0})
		}
		wantSkip := skip
		want := rxModel(list, len(bufs), lens(bufs), lim, umem, &wantSkip)

		res := readRX(fzLayout, descs, mask, cons, avail, umem, bufs, sizes, lim, &skip, &free)

		if !bytes.Equal(descs, orig) {
			t.Fatal("readRX wrote to the ring")
		}
		got := fzResult{res: res, skip: skip}
		for i := range res.filled {
			got.frames = append(got.frames, bufs[i][:sizes[i]])
		}
		if res.staged > 0 {
			got.staged = lim.stage[:res.staged]
		}
		if !want.equal(got) {
			t.Fatalf("readRX: %+v, skip %v, %d frames\nmodel: %+v, skip %v, %d frames", got.res, got.skip, len(got.frames), want.res, want.skip, len(want.frames))
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

type fzDesc struct {
	addr  uint64
	n     uint32
	contd bool
}

type fzResult struct {
	res    rxResult
	frames [][]byte
	staged []byte
	skip   bool
}

func (a fzResult) equal(b fzResult) bool {
	if a.res != b.res || a.skip != b.skip || len(a.frames) != len(b.frames) || !bytes.Equal(a.staged, b.staged) {
		return false
	}
	for i := range a.frames {
		if !bytes.Equal(a.frames[i], b.frames[i]) {
			return false
		}
	}
	return true
}

func lens(bufs [][]byte) []int {
	l := make([]int, len(bufs))
	for i, b := range bufs {
		l[i] = len(b)
	}
	return l
}

// rxModel is the framing readRX implements, over a decoded list: skip the
// rest of a bad chain; a frame is descriptors up to one without CONTD, at
// most maxDescs of them (a longer chain is dropped through its end); a
// chain whose end is not in the list yet stays; a frame with a descriptor
// outside its RX frame is dropped, as is a chain longer than the stage; a
// frame goes to its buffer when it fits (a super packet only into one at
// least as long as the stage), to the stage when it is a super packet
// that fits there (ending the batch), and is otherwise too short for its
// buffer (ending the batch).
func rxModel(list []fzDesc, nbufs int, bufLens []int, lim rxLimits, umem []byte, skip *bool) (out fzResult) {
	r := &out.res
	maxDescs := max(lim.maxDescs, 1)
	i := 0
	okDesc := func(d fzDesc) bool {
		return d.addr < fzLayout.rxEnd && d.n > 0 && d.addr+uint64(d.n) <= fzLayout.chunk(d.addr)+fzFrame
	}
	defer func() { out.skip = *skip; r.consumed = i }()
	for *skip && i < len(list) {
		*skip = list[i].contd
		i++
	}
	for i < len(list) && r.filled < nbufs {
		j := i
		for j < len(list) && j-i < maxDescs-1 && list[j].contd {
			j++
		}
		if j == len(list) || (list[j].contd && j-i < maxDescs-1) {
			return // the chain's end is not here yet
		}
		chain := list[i : j+1]
		if list[j].contd { // maxDescs descriptors, still going
			i = j + 1
			r.badChains++
			*skip = true
			for *skip && i < len(list) {
				*skip = list[i].contd
				i++
			}
			continue
		}
		i = j + 1
		var frame []byte
		good := true
		for _, d := range chain {
			good = good && okDesc(d)
		}
		if !good {
			r.bad++
			continue
		}
		for _, d := range chain {
			frame = append(frame, umem[d.addr:d.addr+uint64(d.n)]...)
		}
		if len(chain) > 1 && len(frame) > len(lim.stage) {
			r.badChains++
			continue
		}
		bl := bufLens[r.filled]
		switch {
		case len(frame) <= bl && (len(frame) <= lim.maxFrame || bl >= len(lim.stage)):
		case len(frame) > lim.maxFrame && len(frame) <= len(lim.stage):
			out.staged = frame
			r.staged = len(frame)
			return
		default:
			r.short, r.shortLen = true, len(frame)
			return
		}
		if lim.keep != nil && !lim.keep(frame) {
			r.refused++
			continue
		}
		out.frames = append(out.frames, frame)
		r.filled++
	}
	return
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
