package pool

import (
	"time"

	"github.com/skylane/skylane/internal/shm"
)

// Alloc fills out with free buffers, now in state as (Nexus, or App when
// they go straight onto the app's alloc ring), and returns how many. It grows the pool by whole segments as needed; at
// MaxSegments it returns fewer at once and counts the shortfall.
func (p *Pool) Alloc(out []uint32, as State) int {
	if !held(as) {
		return 0 // as Free they would be out of the free lists yet look free
	}
	n := 0
	for n < len(out) {
		if p.nfree == 0 && !p.grow() {
			p.stats.AllocFails += uint64(len(out) - n)
			break
		}
		for len(p.free[p.lowest]) == 0 {
			p.lowest++
		}
		seg := p.lowest
		st := p.free[seg]
		k := min(len(st), len(out)-n)
		for j := range k {
			idx := st[len(st)-1-j]
			out[n+j] = idx
			*p.stateAt(p.split(idx)) = byte(as)
		}
		p.free[seg] = st[:len(st)-k]
		p.touched[seg] = true
		p.nfree -= k
		n += k
	}
	p.stats.Allocs += uint64(n)
	if p.nfree < p.opts.LowWatermark {
		p.grow()
	}
	return n
}

// Free returns a buffer held by the nexus to the pool. It returns false, and
// changes nothing, if idx is not a buffer in state Nexus.
func (p *Pool) Free(idx uint32) bool {
	return p.Reclaim(idx, Nexus)
}

// Reclaim returns buffer idx, which must be in state from (Nexus or App),
// to the pool.
func (p *Pool) Reclaim(idx uint32, from State) bool {
	if !held(from) || !p.transition(idx, from, Free) {
		return false
	}
	seg, _ := p.split(idx)
	p.free[seg] = append(p.free[seg], idx)
	p.nfree++
	if int(seg) < p.lowest {
		p.lowest = int(seg)
	}
	return true
}

// grow activates the lowest inactive segment. It returns false at the
// maximum.
func (p *Pool) grow() bool {
	if p.nActive >= p.opts.MaxSegments {
		return false
	}
	seg := 0
	for p.active[seg] {
		seg++
	}
	st := p.free[seg]
	if st == nil {
		st = make([]uint32, 0, p.bps)
	}
	// Pushed high to low so that the lowest index is handed out first.
	base := uint32(seg * p.bps)
	for i := p.bps - 1; i >= 0; i-- {
		st = append(st, base+uint32(i))
	}
	p.free[seg] = st
	p.active[seg] = true
	p.touched[seg] = true
	p.nActive++
	p.nfree += p.bps
	p.lowest = min(p.lowest, seg)
	p.stats.Grows++
	if p.onSegment != nil {
		p.onSegment(seg, true)
	}
	return true
}

// Reap returns to the OS every segment that has had all its buffers free
// and untouched for IdleTimeout at now, highest first, keeping MinSegments.
// Call it about once a second (DefaultReapInterval) from the owner.
func (p *Pool) Reap(now time.Time) (released int) {
	for seg := range p.active {
		if !p.active[seg] {
			continue
		}
		if p.touched[seg] || len(p.free[seg]) < p.bps {
			p.touched[seg] = false
			p.lastBusy[seg] = now
		}
	}
	for seg := len(p.active) - 1; seg >= 0 && p.nActive > p.opts.MinSegments; seg-- {
		if !p.active[seg] || len(p.free[seg]) < p.bps || now.Sub(p.lastBusy[seg]) < p.opts.IdleTimeout {
			continue
		}
		p.release(seg)
		released++
	}
	return released
}

// release drops a fully free segment and punches its memory out of all
// three regions.
func (p *Pool) release(seg int) {
	p.active[seg] = false
	p.nActive--
	p.nfree -= len(p.free[seg])
	p.free[seg] = p.free[seg][:0]
	for _, r := range []struct {
		punch func(off, n int) error
		size  int
	}{{p.bufs.Punch, p.segSize}, {p.umeta.Punch, p.umetaSeg}, {p.nmeta.Punch, p.nmetaSeg}} {
		if err := r.punch(seg*r.size, r.size); err != nil {
			p.stats.PunchErrors++
		}
	}
	p.stats.Releases++
	if p.onSegment != nil {
		p.onSegment(seg, false)
	}
}

// Available returns how many buffers Alloc could still hand out: the free
// ones and those of the segments it may yet grow.
func (p *Pool) Available() int { return p.nfree + (p.opts.MaxSegments-p.nActive)*p.bps }

// CanAlloc reports whether Alloc would return at least one buffer.
func (p *Pool) CanAlloc() bool { return p.nfree > 0 || p.nActive < p.opts.MaxSegments }

// SegmentActive reports whether seg is active.
func (p *Pool) SegmentActive(seg int) bool { return seg >= 0 && seg < len(p.active) && p.active[seg] }

// Stats returns the pool's counters.
func (p *Pool) Stats() Stats {
	s := p.stats
	s.Segments = p.nActive
	s.FreeBuffers = p.nfree
	s.BuffersTotal = p.nActive * p.bps
	for seg, on := range p.active {
		if on && len(p.free[seg]) == p.bps {
			s.FreeSegments++
		}
	}
	return s
}

// AllocatedBytes reports the memory the OS holds for the buffer region.
func (p *Pool) AllocatedBytes() (int64, error) { return p.bufs.AllocatedBytes() }

// Close unmaps and closes the pool's regions. The memory goes back to the OS
// once no app maps it either. Safe to call twice.
func (p *Pool) Close() error {
	var first error
	for i, m := range p.maps {
		if err := m.Unmap(); err != nil && first == nil {
			first = err
		}
		p.maps[i] = nil
	}
	for _, r := range []*shm.Region{p.bufs, p.umeta, p.nmeta} {
		if r != nil {
			if err := r.Close(); err != nil && first == nil {
				first = err
			}
		}
	}
	p.mem, p.umem, p.nmem = nil, nil, nil
	return first
}
