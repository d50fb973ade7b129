package flow

// slotHeap is a port's free advisory slots, a binary min-heap: Register
// takes the lowest, so the slots in use stay packed at the bottom of the
// channel's table and its touched pages grow with the port's concurrent
// flows, not with its churn (DefaultAdvisorySlots).
type slotHeap []uint32

func (h *slotHeap) push(v uint32) {
	s := append(*h, v)
	for i := len(s) - 1; i > 0; {
		p := (i - 1) / 2
		if s[p] <= s[i] {
			break
		}
		s[p], s[i] = s[i], s[p]
		i = p
	}
	*h = s
}

// pop removes and returns the lowest slot; the heap must not be empty.
func (h *slotHeap) pop() uint32 {
	s := *h
	v := s[0]
	last := len(s) - 1
	s[0] = s[last]
	s = s[:last]
	for i := 0; ; {
		l, m := 2*i+1, i
		if l < len(s) && s[l] < s[m] {
			m = l
		}
		if r := l + 1; r < len(s) && s[r] < s[m] {
			m = r
		}
		if m == i {
			break
		}
		s[i], s[m] = s[m], s[i]
		i = m
	}
	*h = s
	return v
}
