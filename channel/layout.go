package channel

import (
	"fmt"

	"github.com/skylane/skylane/pool"
	"github.com/skylane/skylane/ring"
)

// Ring defaults and names (docs/design.md §3).
const (
	DefaultTxSize    = 256
	DefaultRxSize    = 1024
	DefaultAllocSize = 256
	DefaultFreeSize  = 256
	DefaultEventSize = 32
	// DefaultAdvisories is the flow-advisory table's entry count (docs/design.md §7).
	DefaultAdvisories = 512
	// AdvisoryLen is the bytes per advisory entry: state uint32, generation uint32.
	AdvisoryLen = 8
)

// Ring positions in Descriptor.Rings.
const (
	RingTX = iota
	RingRX
	RingAlloc
	RingFree
	RingEvent
	numRings
)

// LayoutVersion changes whenever the shared layout changes; Attach refuses
// any other. 2: three more counters (Events, Suspends, Resumes) move the
// segment bitmap.
const LayoutVersion = 2

// RingDesc places one ring inside the rings region.
type RingDesc struct {
	Offset int `json:"offset"`
	Size   int `json:"size"`
}

// Descriptor tells an app how to map a channel. It travels beside the
// channel's file descriptors (in this order: buffers, user metadata, rings,
// advisories, stats, the nexus's eventfd, the app's eventfd).
type Descriptor struct {
	Version         int                `json:"version"`
	Name            string             `json:"name"`
	BufferSize      int                `json:"buffer_size"`
	SegmentSize     int                `json:"segment_size"`
	MaxSegments     int                `json:"max_segments"`
	UserMetaSegSize int                `json:"user_meta_seg_size"`
	RingsSize       int                `json:"rings_size"`
	Rings           [numRings]RingDesc `json:"rings"`
	Advisories      int                `json:"advisories"`
	AdvisorySize    int                `json:"advisory_size"`
	StatsSize       int                `json:"stats_size"`
}

// fd positions in the list that goes with a Descriptor.
const (
	fdBuffers = iota
	fdUserMeta
	fdRings
	fdAdvisory
	fdStats
	fdKickNexus
	fdKickApp
	numFDs
)

// Stats region layout: a header, counters the nexus publishes, and the
// bitmap of active segments (so an app knows whether a segment it was told
// is gone has come back since).
const (
	statsOffMagic   = 0x00 // uint32 "SKYS"
	statsOffState   = 0x08 // uint32: 0 running, 1 defunct
	statsOffReason  = 0x0C // uint32: DefunctReason
	statsOffCounter = 0x40 // uint64 × numCounters
	statsMagic      = 0x534B5953
)

func statsOffBitmap() int { return statsOffCounter + 8*numCounters }

func (d *Descriptor) bitmapLen() int { return (d.MaxSegments + 7) / 8 }

func roundUp(n, to int) int { return (n + to - 1) / to * to }

// ringsLayout places the five rings, each on its own cache lines.
func ringsLayout(sizes [numRings]int) ([numRings]RingDesc, int, error) {
	var rs [numRings]RingDesc
	off := 0
	for i, n := range sizes {
		if !ring.ValidSize(n) {
			return rs, 0, fmt.Errorf("ring %s size %d: must be a power of two in [%d, %d]", ringNames[i], n, ring.MinSize, ring.MaxSize)
		}
		rs[i] = RingDesc{Offset: off, Size: n}
		off += roundUp(ring.MemSize(n), 64)
	}
	return rs, off, nil
}

var ringNames = [numRings]string{"tx", "rx", "alloc", "free", "event"}

// validate checks a descriptor received from the nexus against sane bounds
// and the sizes of the memfds it came with, so mapping cannot go wrong.
func (d *Descriptor) validate(fileSizes [numFDs]int64) error {
	switch {
	case d.Version != LayoutVersion:
		return fmt.Errorf("channel layout version %d, this library speaks %d", d.Version, LayoutVersion)
	case d.BufferSize < pool.MinBufferSize || d.BufferSize > pool.MaxBufferSize || d.SegmentSize <= 0 || d.SegmentSize%d.BufferSize != 0:
		return fmt.Errorf("channel descriptor: bad buffer/segment size %d/%d", d.BufferSize, d.SegmentSize)
	case d.MaxSegments <= 0 || d.MaxSegments*(d.SegmentSize/d.BufferSize) > pool.MaxBuffers:
		return fmt.Errorf("channel descriptor: bad max segments %d", d.MaxSegments)
	case int64(d.MaxSegments)*int64(d.SegmentSize) > fileSizes[fdBuffers]:
		return fmt.Errorf("channel descriptor: buffer region is %d bytes, need %d", fileSizes[fdBuffers], d.MaxSegments*d.SegmentSize)
	case d.UserMetaSegSize < (d.SegmentSize/d.BufferSize)*pool.UserMetaLen || int64(d.MaxSegments)*int64(d.UserMetaSegSize) > fileSizes[fdUserMeta]:
		return fmt.Errorf("channel descriptor: bad user metadata layout")
	case d.Advisories < 0 || d.Advisories*AdvisoryLen > d.AdvisorySize || int64(d.AdvisorySize) > fileSizes[fdAdvisory]:
		return fmt.Errorf("channel descriptor: bad advisory table")
	case statsOffBitmap()+d.bitmapLen() > d.StatsSize || int64(d.StatsSize) > fileSizes[fdStats]:
		return fmt.Errorf("channel descriptor: bad stats region")
	case int64(d.RingsSize) > fileSizes[fdRings]:
		return fmt.Errorf("channel descriptor: rings region is %d bytes, need %d", fileSizes[fdRings], d.RingsSize)
	}
	var sizes [numRings]int
	for i, r := range d.Rings {
		sizes[i] = r.Size
	}
	want, total, err := ringsLayout(sizes)
	if err != nil {
		return fmt.Errorf("channel descriptor: %w", err)
	}
	if want != d.Rings || total > d.RingsSize {
		return fmt.Errorf("channel descriptor: ring placement does not match the layout")
	}
	return nil
}
