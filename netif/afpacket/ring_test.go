package afpacket

import (
	"encoding/binary"
	"testing"
)

// block builds a TPACKET_V3 block as the kernel lays it out: the block
// header, then each frame's header, virtio header space and data, each
// frame 16-byte aligned, tp_next_offset 0 on the last.
func block(frames ...[]byte) []byte {
	b := make([]byte, 4096)
	off := blockHdrLen
	binary.NativeEndian.PutUint32(b[blkStatusOff:], statusUser)
	binary.NativeEndian.PutUint32(b[blkNumPktsOff:], uint32(len(frames)))
	binary.NativeEndian.PutUint32(b[blkFirstOff:], uint32(off))
	const mac = 64 + 2 // tpacket_rcv's macoff: aligned header + 16 + vnet, minus nothing
	for i, f := range frames {
		h := b[off:]
		binary.NativeEndian.PutUint32(h[frSnapOff:], uint32(len(f)))
		binary.NativeEndian.PutUint32(h[frLenOff:], uint32(len(f)))
		binary.NativeEndian.PutUint16(h[frMacOff:], mac)
		copy(h[mac:], f)
		next := (mac + len(f) + 15) &^ 15
		if i < len(frames)-1 {
			binary.NativeEndian.PutUint32(h[frNextOff:], uint32(next))
		}
		off += next
	}
	binary.NativeEndian.PutUint32(b[blkLenOff:], uint32(off))
	return b
}

func TestBlockIter(t *testing.T) {
	f1, f2 := make([]byte, 60), make([]byte, 1514)
	f1[0], f2[0] = 1, 2
	b := block(f1, f2)
	var it blockIter
	if err := it.reset(b, minMac); err != nil {
		t.Fatal(err)
	}
	var got [][]byte
	for {
		var f frameDesc
		ok, err := it.next(&f)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		got = append(got, b[f.data:f.data+f.snap])
	}
	if len(got) != 2 || len(got[0]) != 60 || got[0][0] != 1 || len(got[1]) != 1514 || got[1][0] != 2 {
		t.Fatalf("walked %d frames", len(got))
	}

	// Each corruption ends the walk with an error, never out of bounds.
	for name, corrupt := range map[string]func(b []byte){
		"num_pkts too large": func(b []byte) { binary.NativeEndian.PutUint32(b[blkNumPktsOff:], 1000) },
		"first out of block": func(b []byte) { binary.NativeEndian.PutUint32(b[blkFirstOff:], 5000) },
		"blk_len past end":   func(b []byte) { binary.NativeEndian.PutUint32(b[blkLenOff:], 5000) },
		"snaplen past end":   func(b []byte) { binary.NativeEndian.PutUint32(b[blockHdrLen+frSnapOff:], 4000) },
		"mac in the header":  func(b []byte) { binary.NativeEndian.PutUint16(b[blockHdrLen+frMacOff:], 8) },
		"next goes nowhere":  func(b []byte) { binary.NativeEndian.PutUint32(b[blockHdrLen+frNextOff:], 0) },
	} {
		c := block(f1, f2)
		corrupt(c)
		err := it.reset(c, minMac)
		for err == nil {
			var f frameDesc
			var ok bool
			ok, err = it.next(&f)
			if ok && f.data+f.snap > len(c) {
				t.Fatalf("%s: frame out of bounds", name)
			}
			if !ok && err == nil {
				t.Fatalf("%s: walk ended without an error", name)
			}
		}
	}
}

// FuzzBlockIter walks arbitrary bytes as a ring block: every frame it
// returns lies inside the block, and the walk ends.
func FuzzBlockIter(f *testing.F) {
	f.Add(block(make([]byte, 60), make([]byte, 100)))
	f.Add(block())
	f.Add(make([]byte, 48))
	f.Fuzz(func(t *testing.T, b []byte) {
		var it blockIter
		if it.reset(b, minMac) != nil {
			return
		}
		for steps := 0; ; steps++ {
			if steps > len(b)/frameHdrLen+1 {
				t.Fatal("walk does not end")
			}
			var f frameDesc
			ok, err := it.next(&f)
			if ok && (f.data < minMac || f.snap < 0 || f.data+f.snap > len(b)) {
				t.Fatalf("frame [%d, +%d) outside a %d-byte block", f.data, f.snap, len(b))
			}
			if !ok || err != nil {
				return
			}
		}
	})
}
