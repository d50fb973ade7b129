// Package reassembly collects the fragments of IPv4 and IPv6 datagrams in
// the nexus (docs/design.md §8b) until each datagram is whole, so that the
// flowswitch can steer it by its ports, which only the first fragment
// carries, and check it before any app sees a byte of it.
//
// A datagram is handed back as its fragments, in offset order, copied as
// they came (whole frames, link header included): they tile the datagram
// exactly, without a gap or an overlap, so whatever joins them next (the
// app's stack, or the kernel) builds the very datagram checked here. The
// fragments are not joined into one packet because a datagram (up to 64
// KiB) does not fit a channel buffer, while each fragment does.
//
// Invariants, each checked by the tests and FuzzReassembler:
//
//   - Memory is bounded: the held frames (charged at their buffer size)
//     never exceed Options.MaxBytes in all nor Options.MaxSourceBytes per
//     source address; a fragment past a limit is dropped and counted, and
//     held ones stay.
//   - A set whose first fragment arrived Options.Timeout ago without
//     completing is dropped whole by Expire, and counted.
//   - A fragment that overlaps another of its set (other than an exact
//     duplicate, which is dropped alone), disagrees with the set's end, is
//     not a multiple of 8 bytes before the end, or would make the datagram
//     larger than 65535 bytes drops its whole set (RFC 5722), counted by
//     reason.
//   - Add never panics and, in steady state, never allocates: buffers and
//     sets are recycled.
//
// A Reassembler is not safe for concurrent use: the flowswitch's worker owns
// it.
package reassembly

import (
	"errors"
	"fmt"
	"time"

	"github.com/skylane/skylane/packet"
)

// Defaults. Linux keeps 4 MiB of fragments per namespace
// (ipfrag_high_thresh) for 30 s (ipfrag_time); a quarter of the memory per
// source lets four busy peers reassemble at once while one flooding source
// cannot take it all. 128 fragments per set holds a 64 KiB datagram cut
// for the smallest IPv6 MTU (52 fragments of 1232 bytes) with room to
// spare, and bounds the insertion work per fragment.
const (
	DefaultMaxBytes     = 4 << 20
	DefaultTimeout      = 30 * time.Second
	DefaultMaxFragments = 128
	maxDatagram         = 65535 // IPv4 total length, IPv6 payload length
)

// ErrBadOptions: the Options are invalid.
var ErrBadOptions = errors.New("reassembly: bad options")

// Options configure a Reassembler.
type Options struct {
	// FrameLen is the largest frame Add accepts, and the size of each
	// buffer a held fragment costs. Required.
	FrameLen int
	// MaxBytes bounds the memory of held fragments in all. 0 means
	// DefaultMaxBytes.
	MaxBytes int
	// MaxSourceBytes bounds it per source address. 0 means MaxBytes/4.
	MaxSourceBytes int
	// MaxFragments bounds the fragments of one set. 0 means
	// DefaultMaxFragments.
	MaxFragments int
	// Timeout is how long a set may wait for its last fragment, from its
	// first. 0 means DefaultTimeout.
	Timeout time.Duration
}

// Stats count fragments, but for Datagrams and the gauges. A fragment
// that drops its set is counted under its reason together with the
// fragments of the set held until then.
type Stats struct {
	Fragments  uint64 // accepted into a set
	Datagrams  uint64 // sets completed and handed back
	Duplicates uint64 // exact copies of a held fragment, dropped alone
	Overlaps   uint64 // overlapped another of its set (RFC 5722): the set dropped
	Oversize   uint64 // reached past 65535 bytes: the set dropped
	Malformed  uint64 // disagreed with its set's end, was not a multiple of 8 bytes before it, was empty or larger than FrameLen: the set dropped
	TooMany    uint64 // one past MaxFragments in its set: the set dropped
	Timeouts   uint64 // held in a set still incomplete after Timeout, dropped
	SourceFull uint64 // dropped alone: its source holds MaxSourceBytes
	MemoryFull uint64 // dropped alone: MaxBytes held in all
	HeldBytes  int    // gauge: held now (buffer bytes)
	HeldSets   int    // gauge: sets held now
}

// setKey identifies a fragment set: source, destination, protocol and
// identification (RFC 791 §3.2, RFC 8200 §4.5), and the family.
type setKey struct {
	src, dst [16]byte
	id       uint32
	proto    uint8
	version  uint8
}

// frag is one held fragment: data bytes [off, end) of the datagram, in
// frame buf (a pooled buffer, sliced to the frame).
type frag struct {
	off, end int
	buf      []byte
}

// set is one datagram being reassembled.
type set struct {
	key        setKey
	frags      []frag // sorted by off, never overlapping
	total      int    // the datagram's data length once its last fragment came, else -1
	have       int    // data bytes held
	deadline   int64
	prev, next *set // in creation order (so deadline order), for Expire
}

// Reassembler holds fragment sets. See the package doc.
type Reassembler struct {
	opts       Options // immutable after New
	timeout    int64
	sets       map[setKey]*set
	sources    map[[16]byte]int // bytes held per source
	head, tail *set             // oldest, newest
	freeSets   []*set
	freeBufs   [][]byte
	done       *set     // the set last handed back, freed by the next call
	out        [][]byte // its frames, handed back
	stats      Stats
}

// New returns an empty Reassembler.
func New(opts Options) (*Reassembler, error) {
	if opts.MaxBytes == 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.MaxSourceBytes == 0 {
		opts.MaxSourceBytes = opts.MaxBytes / 4
	}
	if opts.MaxFragments == 0 {
		opts.MaxFragments = DefaultMaxFragments
	}
	if opts.Timeout == 0 {
		opts.Timeout = DefaultTimeout
	}
	switch {
	case opts.FrameLen < 68 || opts.FrameLen > 1<<17:
		return nil, fmt.Errorf("%w: FrameLen %d outside 68..%d", ErrBadOptions, opts.FrameLen, 1<<17)
	case opts.MaxBytes < opts.FrameLen || opts.MaxSourceBytes < opts.FrameLen:
		return nil, fmt.Errorf("%w: MaxBytes %d and MaxSourceBytes %d must hold a frame of %d bytes",
			ErrBadOptions, opts.MaxBytes, opts.MaxSourceBytes, opts.FrameLen)
	case opts.MaxSourceBytes > opts.MaxBytes:
		return nil, fmt.Errorf("%w: MaxSourceBytes %d above MaxBytes %d", ErrBadOptions, opts.MaxSourceBytes, opts.MaxBytes)
	case opts.MaxFragments < 2 || opts.MaxFragments > 8192:
		return nil, fmt.Errorf("%w: MaxFragments %d outside 2..8192", ErrBadOptions, opts.MaxFragments)
	case opts.Timeout < 0:
		return nil, fmt.Errorf("%w: negative Timeout %v", ErrBadOptions, opts.Timeout)
	}
	return &Reassembler{
		opts:    opts,
		timeout: int64(opts.Timeout),
		sets:    make(map[setKey]*set),
		sources: make(map[[16]byte]int),
	}, nil
}

// Stats returns the counters.
func (r *Reassembler) Stats() Stats {
	s := r.stats
	s.HeldSets = len(r.sets)
	return s
}

// Add takes a copy of frame, a fragment that packet.Parse accepted into p
// (p.IsFragment()), at time now (monotonic nanoseconds). When the fragment
// completes its datagram, Add returns the datagram's frames in offset order
// (the first, which carries the L4 header, at index 0), each a frame as
// it came; they stay valid until the next call of Add, Expire or Flush.
// Otherwise it returns nil: the fragment is held, or dropped and counted.
func (r *Reassembler) Add(now int64, frame []byte, p *packet.Parsed) [][]byte {
	r.recycle()
	if !p.IsFragment() || len(frame) > r.opts.FrameLen {
		r.stats.Malformed++
		return nil
	}
	off := int(p.FragOff)
	end := off + p.L3Off + p.IPLen - p.L4Off // a first fragment's L4 header is data too
	k := setKey{id: p.ID, proto: p.Proto, version: p.IPVersion}
	k.src, k.dst = p.Src().As16(), p.Dst().As16()
	s := r.sets[k]
	hdr := 0
	if p.IPVersion == 4 {
		hdr = p.IPHdrLen // IPv4 counts its header in the 65535; IPv6 only the payload
	}
	bad := &r.stats.Malformed
	switch {
	case end+hdr > maxDatagram:
		bad = &r.stats.Oversize
	case end == off, p.MoreFrags && (end-off)%8 != 0:
	case s != nil && s.total >= 0 && (end > s.total || !p.MoreFrags && end != s.total):
	case s != nil && !p.MoreFrags && s.frags[len(s.frags)-1].end > end:
	default:
		bad = nil
	}
	if bad != nil {
		*bad++
		if s != nil {
			r.drop(s, bad)
		}
		return nil
	}
	// Where the fragment goes: before the first held one that starts at
	// or after its end; it must not overlap the one before.
	i := 0
	if s != nil {
		for i < len(s.frags) && s.frags[i].off < end {
			i++
		}
		if i > 0 {
			if f := s.frags[i-1]; f.off == off && f.end == end {
				r.stats.Duplicates++
				return nil
			} else if f.end > off {
				r.stats.Overlaps++
				r.drop(s, &r.stats.Overlaps)
				return nil
			}
		}
		if len(s.frags) == r.opts.MaxFragments {
			r.stats.TooMany++
			r.drop(s, &r.stats.TooMany)
			return nil
		}
	}
	cost := r.opts.FrameLen
	if r.stats.HeldBytes+cost > r.opts.MaxBytes {
		r.stats.MemoryFull++
		return nil
	}
	if r.sources[k.src]+cost > r.opts.MaxSourceBytes {
		r.stats.SourceFull++
		return nil
	}
	if s == nil {
		s = r.newSet(k, now)
	}
	buf := r.getBuf()[:len(frame)]
	copy(buf, frame)
	s.frags = append(s.frags, frag{})
	copy(s.frags[i+1:], s.frags[i:])
	s.frags[i] = frag{off: off, end: end, buf: buf}
	s.have += end - off
	if !p.MoreFrags {
		s.total = end
	}
	r.stats.HeldBytes += cost
	r.sources[k.src] += cost
	r.stats.Fragments++
	if s.total < 0 || s.have != s.total {
		return nil
	}
	// Whole: no gaps, since the fragments neither overlap nor pass the end.
	r.stats.Datagrams++
	r.unlink(s)
	r.done = s
	r.out = r.out[:0]
	for _, f := range s.frags {
		r.out = append(r.out, f.buf)
	}
	return r.out
}

// Expire drops the sets whose time is up at now and returns how many.
func (r *Reassembler) Expire(now int64) int {
	r.recycle()
	n := 0
	for r.head != nil && r.head.deadline <= now {
		r.drop(r.head, &r.stats.Timeouts)
		n++
	}
	return n
}

// Next returns the deadline of the oldest set, if any: when Expire has
// work next.
func (r *Reassembler) Next() (int64, bool) {
	if r.head == nil {
		return 0, false
	}
	return r.head.deadline, true
}

// Flush drops every held set (uncounted: the owner is going away).
func (r *Reassembler) Flush() {
	r.recycle()
	for r.head != nil {
		r.free(r.head)
	}
}

func (r *Reassembler) newSet(k setKey, now int64) *set {
	var s *set
	if n := len(r.freeSets); n > 0 {
		s = r.freeSets[n-1]
		r.freeSets = r.freeSets[:n-1]
	} else {
		s = &set{frags: make([]frag, 0, 8)}
	}
	s.key, s.total, s.have, s.deadline = k, -1, 0, now+r.timeout
	r.sets[k] = s
	s.prev, s.next = r.tail, nil
	if r.tail != nil {
		r.tail.next = s
	} else {
		r.head = s
	}
	r.tail = s
	return s
}

// drop frees set s, counting its fragments in *ctr.
func (r *Reassembler) drop(s *set, ctr *uint64) {
	*ctr += uint64(len(s.frags))
	r.free(s)
}

// recycle frees the set handed back by the last call, if any.
func (r *Reassembler) recycle() {
	if s := r.done; s != nil {
		r.done = nil
		clear(r.out)
		r.out = r.out[:0]
		r.release(s)
	}
}

// free unlinks set s and gives its buffers and itself back.
func (r *Reassembler) free(s *set) {
	r.unlink(s)
	r.release(s)
}

// unlink takes s out of the map and the age list.
func (r *Reassembler) unlink(s *set) {
	delete(r.sets, s.key)
	if s.prev != nil {
		s.prev.next = s.next
	} else {
		r.head = s.next
	}
	if s.next != nil {
		s.next.prev = s.prev
	} else {
		r.tail = s.prev
	}
	s.prev, s.next = nil, nil
}

// release returns s's buffers and s, unlinked, to the free lists.
func (r *Reassembler) release(s *set) {
	cost := len(s.frags) * r.opts.FrameLen
	r.stats.HeldBytes -= cost
	if left := r.sources[s.key.src] - cost; left > 0 {
		r.sources[s.key.src] = left
	} else {
		delete(r.sources, s.key.src)
	}
	for _, f := range s.frags {
		r.freeBufs = append(r.freeBufs, f.buf[:0])
	}
	clear(s.frags)
	s.frags = s.frags[:0]
	r.freeSets = append(r.freeSets, s)
}

// getBuf returns a buffer of FrameLen bytes; at most MaxBytes/FrameLen
// ever exist, as HeldBytes bounds those in use.
func (r *Reassembler) getBuf() []byte {
	if n := len(r.freeBufs); n > 0 {
		b := r.freeBufs[n-1]
		r.freeBufs[n-1] = nil
		r.freeBufs = r.freeBufs[:n-1]
		return b[:r.opts.FrameLen]
	}
	return make([]byte, r.opts.FrameLen)
}
