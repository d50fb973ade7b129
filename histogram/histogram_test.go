package histogram

import "testing"

func TestObserve(t *testing.T) {
	h := New(1, 2, 4)
	for _, v := range []float64{0.5, 1, 1.5, 4, 5, 100} {
		h.Observe(v)
	}
	s := h.Snapshot()
	want := []uint64{2, 1, 1, 2} // ≤1: 0.5 1; ≤2: 1.5; ≤4: 4; above: 5 100
	for i := range want {
		if s.Counts[i] != want[i] {
			t.Fatalf("counts %v, want %v", s.Counts, want)
		}
	}
	if s.Count != 6 || s.Sum != 112 {
		t.Errorf("count %d, sum %v", s.Count, s.Sum)
	}
	if c := s.Cumulative(); c[1] != 2 || c[2] != 3 || c[4] != 4 || len(c) != 3 {
		t.Errorf("cumulative %v", c)
	}
	if a := testing.AllocsPerRun(100, func() { h.Observe(3) }); a != 0 {
		t.Errorf("Observe allocates %v times", a)
	}
	if b := Exponential(1, 2, 4); b[3] != 8 {
		t.Errorf("Exponential: %v", b)
	}
}
