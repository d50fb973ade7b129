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

// LayoutVersion changes whenever the shared layout changes, the buffers'
// metadata below included; Receive refuses any other, and so does the
// nexus when an app names another at open (its control protocol). 2: three
// more counters (Events, Suspends, Resumes) move the segment bitmap. 3: the
// metadata offsets are part of the layout. 4: the checksum-state flags of
// a data ring's slots (FlagCsumPartial, FlagCsumValid).
const LayoutVersion = 4

// Checksum state of a packet, in the Flags of its TX or RX ring slot
// (Buf.Flags), as Linux's CHECKSUM_PARTIAL and CHECKSUM_UNNECESSARY, or
// virtio-net's NEEDS_CSUM and DATA_VALID. Other bits are zero; a reader
// ignores the ones it does not know.
//
// FlagCsumPartial, set by the app on TX: the packet's TCP or UDP checksum
// was not computed (its field holds zero or the pseudo-header sum). The
// nexus completes it in software where the packet leaves on a device that
// needs it (not on an in-memory wire between nexuses, netif.TrustedWire; a
// super packet gets fresh checksums from whoever segments it). The nexus
// trusts the bit for nothing else: a wrong checksum hurts only the peer.
//
// FlagCsumValid, set by the nexus on RX: the packet came over an
// in-memory wire from another nexus, whose senders' bytes the channels
// carried unchanged, and needs no checksum check; its TCP or UDP checksum
// field may be incomplete (it may have left with FlagCsumPartial). A
// packet without it came from a device: the app verifies its checksums.
const (
	FlagCsumPartial uint16 = 1 << 0
	FlagCsumValid   uint16 = 1 << 1
)

// Buffer metadata (pool.UserMetaLen = 32 bytes per buffer, shared memory
// the app may write), the part of the layout the nexus and the app read
// and write per packet.
//
// An RX buffer's, written by the nexus before delivery:
//
//	bytes  0..15  flow ID: the ID the nexus gave the flow at registration
//	bytes 16..31  zero (reserved)
//
// A TX buffer's, written by the app before Send:
//
//	bytes  0..15  flow ID: the ID of the flow the packet belongs to, as
//	              the nexus told the app when it registered the flow
//	bytes 16..17  segmentation size, little endian: 0 for a packet within
//	              the MTU; for a TCP super packet (IP length above the
//	              MTU, up to the buffer) the MSS its segments carry, at
//	              least MinSegSize
//	bytes 18..31  reserved: the app writes zeros, the nexus ignores them
//
// The nexus copies the flow ID and the segmentation size together with the
// packet, before checking them: the app may change them at any time.
const (
	RxMetaFlowIDOff  = 0
	RxMetaFlowIDLen  = 16
	TxMetaFlowIDOff  = 0
	TxMetaFlowIDLen  = 16
	TxMetaSegSizeOff = 16
	TxMetaSegSizeLen = 2
)

// MinSegSize is the smallest segmentation size a TX super packet may name:
// TCP's minimum MSS (gVisor's header.TCPMinimumMSS, Linux's TCP_MIN_MSS),
// so that a 16 KiB super packet never costs the nexus more than a few
// hundred segments to cut.
const MinSegSize = 88

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
		return fmt.Errorf("channel layout version %d, this library speaks %d: the app and the nexus come from different Skylane versions; rebuild the app against the nexus's", d.Version, LayoutVersion)
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
