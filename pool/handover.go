package pool

import (
	"fmt"
	"time"

	"github.com/skylane/skylane/internal/shm"
)

// Handover is what a pool's owner hands to the process that takes it over
// (a nexus takeover), besides the regions' descriptors (Export): the
// options in force, the active segments and the counters. Buffer states
// travel in the nexus metadata region itself, which no app can map, so
// the free lists are rebuilt from it.
type Handover struct {
	Options Options `json:"options"`
	Active  []int   `json:"active"`
	Stats   Stats   `json:"stats"`
}

// Export returns the pool's state and duplicates of its three regions'
// descriptors (buffers, user metadata, nexus metadata), which the caller
// owns. The pool is unchanged and keeps serving.
func (p *Pool) Export() (Handover, [3]int, error) {
	st := Handover{Options: p.opts, Stats: p.stats}
	for seg, on := range p.active {
		if on {
			st.Active = append(st.Active, seg)
		}
	}
	fds := [3]int{-1, -1, -1}
	for i, r := range []*shm.Region{p.bufs, p.umeta, p.nmeta} {
		fd, err := shm.Dup(r.FD())
		if err != nil {
			for _, f := range fds[:i] {
				shm.CloseFD(f)
			}
			return Handover{}, [3]int{-1, -1, -1}, fmt.Errorf("export pool %q: %w", p.opts.Name, err)
		}
		fds[i] = fd
	}
	return st, fds, nil
}

// Adopt rebuilds a pool another process exported: it takes ownership of
// fds (buffers, user metadata, nexus metadata) when it succeeds, and
// leaves them to the caller when it fails. Every buffer's state is read
// from the nexus metadata region (nexus-only memory); the free lists are
// the Free buffers of the active segments.
func Adopt(st Handover, fds [3]int) (_ *Pool, err error) {
	opts := st.Options.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("adopt pool: %w", err)
	}
	p := newPool(opts)
	p.stats = st.Stats
	bps := p.bps
	defer func() {
		if err != nil { // the descriptors stay the caller's
			for _, m := range p.maps {
				m.Unmap()
			}
		}
	}()
	sizes := [3]int{opts.MaxSegments * opts.SegmentSize, opts.MaxSegments * p.umetaSeg, opts.MaxSegments * p.nmetaSeg}
	regions := [3]**shm.Region{&p.bufs, &p.umeta, &p.nmeta}
	mems := [3]*[]byte{&p.mem, &p.umem, &p.nmem}
	for i, name := range []string{"-buffers", "-usermeta", "-nexusmeta"} {
		r, err := shm.AdoptRegion(fds[i], opts.Name+name, sizes[i])
		if err != nil {
			return nil, fmt.Errorf("adopt pool: %w", err)
		}
		*regions[i] = r
		if p.maps[i], err = shm.Map(r.FD(), 0, sizes[i], true); err != nil {
			return nil, fmt.Errorf("adopt pool: map %s: %w", opts.Name+name, err)
		}
		*mems[i] = p.maps[i].Bytes()
	}
	now := time.Now()
	for _, seg := range st.Active {
		if seg < 0 || seg >= opts.MaxSegments || p.active[seg] {
			return nil, fmt.Errorf("adopt pool %q: active segment %d of %d", opts.Name, seg, opts.MaxSegments)
		}
		p.active[seg] = true
		p.nActive++
		p.touched[seg], p.lastBusy[seg] = true, now
		stack := make([]uint32, 0, bps)
		base := uint32(seg * bps)
		for i := bps - 1; i >= 0; i-- { // lowest index on top, as grow does
			switch sp := p.stateAt(uint32(seg), uint32(i)); State(*sp) {
			case Nexus:
				// In flight in the process that exported the pool (a
				// packet it held between two rounds): nobody here
				// holds it, so it goes back, and its packet is lost.
				*sp = byte(Free)
				p.Reclaimed++
				stack = append(stack, base+uint32(i))
			case Free:
				stack = append(stack, base+uint32(i))
			case App:
			default:
				return nil, fmt.Errorf("adopt pool %q: buffer %d in unknown state %d", opts.Name, base+uint32(i), *p.stateAt(uint32(seg), uint32(i)))
			}
		}
		p.free[seg] = stack
		p.nfree += len(stack)
	}
	if p.nActive < opts.MinSegments {
		return nil, fmt.Errorf("adopt pool %q: %d active segments, fewer than MinSegments %d", opts.Name, p.nActive, opts.MinSegments)
	}
	p.lowest = 0
	for p.lowest < len(p.free)-1 && len(p.free[p.lowest]) == 0 {
		p.lowest++
	}
	return p, nil
}

// Abandon unmaps the pool and closes its descriptors without touching its
// memory: the process that adopted it carries on with the same pages.
func (p *Pool) Abandon() error { return p.Close() }
