package flowswitch

// rxHold runs adaptive batching on a fresh read of got frames (now in
// s.bufs[rxHeld-got:rxHeld]) and reports whether the held frames are to be
// delivered now, and how many there are.
func (r *regState) rxHold(got int, now int64, batch int) (int, bool) {
	if got > 0 {
		if r.rxHeld == got {
			r.rxSince = now
			r.heldNow = false
		}
		r.mit.Count(got, now)
	} else {
		r.mit.Count(0, now) // advance the samples on a quiet link too
	}
	if r.rxHeld == 0 {
		return 0, false
	}
	if !r.mit.Release(r.rxHeld, batch, r.rxSince, now) {
		if !r.heldNow {
			r.heldNow = true
			r.stats.Held++
		}
		return 0, false
	}
	n := r.rxHeld
	r.rxHeld = 0
	return n, true
}

// rxHeldDue delivers the frames adaptive batching holds once their hold
// has passed (Service: no new frame came to trigger it).
func (s *Switch) rxHeldDue(now int64) (int, error) {
	r := s.reg
	if r == nil || r.rxHeld == 0 {
		return 0, nil
	}
	if !r.mit.Release(r.rxHeld, s.batch, r.rxSince, now) {
		return 0, nil
	}
	n := r.rxHeld
	r.rxHeld = 0
	return n, s.rxDeliver(n)
}
