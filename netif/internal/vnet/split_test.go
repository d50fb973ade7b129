package vnet

import (
	"bytes"
	"testing"
)

// A Splitter hands out exactly the segments Super.Segment writes, in order,
// across reads of any batch size, and a short buffer ends the batch with an
// error after the segments before it.
func TestSplitter(t *testing.T) {
	pkt := superTCP(t, false, 10000, nil)
	h := Hdr{GSOType: GSOTCPv4, GSOSize: 1448}
	var ref Super
	if err := ref.Init(pkt, 0, &h); err != nil {
		t.Fatal(err)
	}
	want := make([][]byte, ref.Segments())
	for i := range want {
		want[i] = make([]byte, 2000)
		n, err := ref.Segment(i, want[i])
		if err != nil {
			t.Fatal(err)
		}
		want[i] = want[i][:n]
	}
	for _, batch := range []int{1, 3, len(want), len(want) + 2} {
		var s Splitter
		if s.Left() != 0 {
			t.Fatal("zero Splitter has segments to hand out")
		}
		if err := s.Init(pkt, 0, &h); err != nil {
			t.Fatal(err)
		}
		s.Start()
		var got [][]byte
		for s.Left() > 0 {
			bufs, sizes := make([][]byte, batch), make([]int, batch)
			for i := range bufs {
				bufs[i] = make([]byte, 2000)
			}
			left := s.Left()
			k, n, err := s.Emit(bufs, sizes)
			if err != nil || k != min(batch, left) || s.Left() != left-k {
				t.Fatalf("batch %d: Emit = %d, %v with %d left before, %d after", batch, k, err, left, s.Left())
			}
			var sum uint64
			for i := range k {
				got = append(got, bufs[i][:sizes[i]])
				sum += uint64(sizes[i])
			}
			if n != sum {
				t.Fatalf("batch %d: Emit says %d bytes, sizes add up to %d", batch, n, sum)
			}
		}
		if len(got) != len(want) {
			t.Fatalf("batch %d: %d segments, want %d", batch, len(got), len(want))
		}
		for i := range got {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("batch %d: segment %d differs from Super.Segment's", batch, i)
			}
		}
	}
	var s Splitter
	if err := s.Init(pkt, 0, &h); err != nil {
		t.Fatal(err)
	}
	s.Start()
	bufs := [][]byte{make([]byte, 2000), make([]byte, 100), make([]byte, 2000)}
	if k, _, err := s.Emit(bufs, make([]int, 3)); err == nil || k != 1 || s.Left() != len(want)-2 {
		t.Fatalf("short second buffer: Emit = %d, %v, %d left; want 1, an error, %d left (that segment lost)", k, err, s.Left(), len(want)-2)
	}
}
