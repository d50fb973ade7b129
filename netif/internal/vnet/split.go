package vnet

// Splitter hands out the segments of a super packet across several reads:
// a driver whose caller's buffers are shorter than a super packet keeps one
// and calls Emit on each read until Left is 0. The zero value has nothing
// to hand out.
type Splitter struct {
	Super
	next, left int
}

// Start begins handing out the segments of the super packet s was
// initialised with (Super.Init).
func (s *Splitter) Start() { s.next, s.left = 0, s.Segments() }

// Left is how many segments are still to hand out.
func (s *Splitter) Left() int { return s.left }

// Emit writes the next segments into bufs, one each, setting sizes, and
// returns how many it wrote and their bytes. A buffer too short for its
// segment (under the link's MaxFrameLen: the caller broke the Link
// contract) loses that segment and ends the batch with errSegBuf.
func (s *Splitter) Emit(bufs [][]byte, sizes []int) (k int, bytes uint64, err error) {
	for k < min(len(bufs), len(sizes)) && s.left > 0 {
		m, err := s.Segment(s.next, bufs[k])
		s.next++
		s.left--
		if err != nil {
			return k, bytes, err
		}
		sizes[k] = m
		bytes += uint64(m)
		k++
	}
	return k, bytes, nil
}
