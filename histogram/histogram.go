// Package histogram is a fixed-bucket histogram that a datapath updates
// in place, without allocating and without a lock of its own (its
// owner's lock guards it), and that metrics export as a Prometheus
// histogram.
//
// Invariants, checked by the tests: Observe never allocates; a Snapshot's
// Counts sum to its Count; bucket i counts the observations v with
// Bounds[i-1] < v <= Bounds[i] (Prometheus's "le"), the last bucket those
// above every bound.
package histogram

import "slices"

// H is a histogram. The zero H has no buckets; Observe then counts and
// sums only.
type H struct {
	bounds []float64 // ascending upper bounds; immutable, may be shared
	counts []uint64  // len(bounds)+1
	sum    float64
	n      uint64
}

// New returns a histogram with the upper bounds (sorted, if they are not).
func New(bounds ...float64) H {
	bounds = slices.Clone(bounds)
	slices.Sort(bounds)
	return H{bounds: bounds, counts: make([]uint64, len(bounds)+1)}
}

// Exponential returns n bounds start, start×factor, ...
func Exponential(start, factor float64, n int) []float64 {
	b := make([]float64, n)
	for i := range b {
		b[i] = start
		start *= factor
	}
	return b
}

// Observe counts v.
func (h *H) Observe(v float64) {
	h.n++
	h.sum += v
	if h.counts == nil {
		return
	}
	i := 0
	for i < len(h.bounds) && v > h.bounds[i] {
		i++
	}
	h.counts[i]++
}

// Snapshot is a copy of a histogram's figures.
type Snapshot struct {
	Bounds []float64 `json:"bounds"`
	Counts []uint64  `json:"counts"` // per bucket, not cumulative; the last above every bound
	Sum    float64   `json:"sum"`
	Count  uint64    `json:"count"`
}

// Snapshot copies h's figures (it allocates: a control path's call).
func (h *H) Snapshot() Snapshot {
	return Snapshot{Bounds: h.bounds, Counts: slices.Clone(h.counts), Sum: h.sum, Count: h.n}
}

// Cumulative returns the counts of the observations at most each bound,
// keyed by the bound: Prometheus's buckets.
func (s Snapshot) Cumulative() map[float64]uint64 {
	m := make(map[float64]uint64, len(s.Bounds))
	var c uint64
	for i, b := range s.Bounds {
		c += s.Counts[i]
		m[b] = c
	}
	return m
}
