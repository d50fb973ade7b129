// Package netif holds the small interface every Skylane device driver
// implements (docs/design.md §9): a [Link] moves batches of whole frames between the
// nexus and a device. Drivers live in packages under netif/ (memif, tun,
// afpacket, afxdp) and import only this package; netif never imports them.
// The shape follows wireguard-go's batch tun.Device and gVisor's link
// endpoints.
//
// Invariants every Link keeps:
//
//   - Frames, not bytes: one element of a batch is one whole frame, framed as
//     [Link.LinkType] says, at most [MaxFrameLen](MTU, LinkType) bytes long.
//   - Buffers stay with the caller at every hand-over. Read copies into
//     caller-owned bufs and keeps no reference once it returns; Write copies
//     the frames (or hands them to the kernel) before it returns, so the
//     caller may reuse them at once. A Link never allocates a buffer for the
//     caller and never hands out its own memory.
//   - Batches are prefixes: Read fills bufs[:n], Write accepted frames[:n].
//     Frames keep their order within and across batches.
//   - A full device tail-drops: Write never blocks; frames it could not
//     queue are counted in Stats.TxDrops, not reported as an error.
//   - Concurrency: one reader goroutine (Read, Wait) and one writer goroutine
//     (Write) may run at once. Name, MTU, LinkType, BatchSize and Stats may
//     be called from any goroutine at any time. Close may be called from any
//     goroutine, more than once; it unblocks a Wait in progress, and from
//     then on Read, Write and Wait return [ErrClosed].
package netif

import (
	"errors"
	"time"

	"github.com/skylane/skylane/packet"
)

// Errors a Link returns. Drivers wrap them with context (the link's name,
// the frame's index); test with errors.Is.
var (
	// ErrClosed is returned by Read, Write and Wait once the link is closed.
	ErrClosed = errors.New("link closed")
	// ErrFrameTooLarge is returned by Write for a frame longer than
	// MaxFrameLen(MTU, LinkType). The frames before it were handled as usual;
	// it and the frames after it were not sent and are not counted as drops.
	ErrFrameTooLarge = errors.New("frame too large")
)

// EthernetHeaderLen is the link header a frame on an Ethernet link may carry
// beyond the L3 MTU: 14 bytes of Ethernet II header plus one 4-byte 802.1Q
// tag, the most packet.Parse accepts. The FCS is never part of a frame here.
const EthernetHeaderLen = 14 + 4

// HeaderLen is the most link-header bytes a frame of type lt carries in front
// of its L3 packet: EthernetHeaderLen for Ethernet, 0 for raw IP and for an
// unknown type.
func HeaderLen(lt packet.LinkType) int {
	if lt == packet.Ethernet {
		return EthernetHeaderLen
	}
	return 0
}

// MaxFrameLen is the longest frame a link with this L3 MTU and link type
// carries: the length every buffer passed to Read must have.
func MaxFrameLen(mtu int, lt packet.LinkType) int {
	return mtu + HeaderLen(lt)
}

// Link is a network device seen by the nexus: it reads and writes batches of
// frames. See the package doc for ownership and concurrency.
type Link interface {
	// Name is the device's name, for logs and stats. Immutable.
	Name() string
	// MTU is the largest L3 packet the link carries, link header excluded.
	// Immutable.
	MTU() int
	// LinkType is the framing of what Read and Write carry. Immutable.
	LinkType() packet.LinkType
	// BatchSize is the preferred most frames per Read or Write call; callers
	// size their bufs, sizes and frames slices to it. Larger batches work.
	// Immutable.
	BatchSize() int

	// Read copies up to min(len(bufs), len(sizes)) waiting frames into
	// bufs[0], bufs[1], ... and sets sizes[i] to the length of the frame in
	// bufs[i]; it returns how many it filled. Each bufs[i] is caller-owned
	// and must have len(bufs[i]) >= MaxFrameLen(MTU(), LinkType()); the link
	// keeps no reference to it after Read returns. Read never blocks: it
	// returns 0, nil when nothing is waiting (use Wait to block). A frame
	// that does not fit its buffer is dropped and counted in RxDrops, and
	// Read returns the frames before it with io.ErrShortBuffer.
	Read(bufs [][]byte, sizes []int) (n int, err error)

	// Write sends frames in order and returns how many it accepted, n: the
	// link copied frames[:n] before returning and keeps no reference to any
	// of them. Write never blocks: when the device is full it tail-drops
	// frames[n:], counts them in TxDrops and returns n, nil. A frame longer
	// than MaxFrameLen stops the batch with ErrFrameTooLarge.
	Write(frames [][]byte) (n int, err error)

	// Wait blocks until Read may return frames, timeout passes, or the link
	// is closed, in which case it returns ErrClosed. timeout < 0 waits with
	// no limit; timeout == 0 does not block. Wait may return early (a
	// spurious wake-up): the caller calls Read, which may return 0. Wait
	// belongs to the reader: it must not run concurrently with another Wait.
	Wait(timeout time.Duration) error

	// Stats returns a snapshot of the link's counters.
	Stats() Stats

	// Close releases the device. It may be called from any goroutine, any
	// number of times; it unblocks Wait. Frames not yet read are discarded.
	Close() error
}

// Notifier is implemented by a link whose frames are written by this
// process (memif): its reader may sleep in a select on Ready instead of
// in Wait, with no goroutine of its own blocked in Wait, which saves a
// goroutine hand-off per wake-up.
type Notifier interface {
	// Ready returns frames, which receives a value after frames were
	// queued for Read (a value may be stale: Read then returns 0), and
	// closed, which is closed when the link is. Drain frames before the
	// last Read that precedes the select, so that a frame queued after
	// that Read signals again. frames is nil when the link cannot say
	// when its frames become readable (a paced memif wire): use Wait.
	// Ready and Wait are the reader's: use one or the other.
	Ready() (frames <-chan struct{}, closed <-chan struct{})
}

// Stats are a link's counters since it was created, seen from its own side:
// Tx counts what this side's Write accepted or dropped, Rx what its Read
// delivered or dropped. Bytes are frame bytes, link header included.
type Stats struct {
	RxPackets uint64 // frames delivered by Read
	RxBytes   uint64 // bytes of those frames
	TxPackets uint64 // frames Write accepted
	TxBytes   uint64 // bytes of those frames
	TxDrops   uint64 // frames Write dropped because the device was full
	RxDrops   uint64 // frames lost on receive (no room, buffer too small)
	// KernelPassed counts the frames the device's steering program gave
	// the kernel's stack instead of this link (XDP_PASS): passed, not
	// dropped, and never seen by Read. Zero for a link without such a
	// program, and for a KernelTap, whose Read sees those frames too.
	KernelPassed uint64
}

// KernelTap is implemented by a Link whose Read returns copies: the
// kernel's stack receives each frame as well, unless the flow was steered
// away from it (AF_PACKET). A frame no user-space flow claims is then the
// kernel's to handle, not a drop: the flowswitch counts it as kept by the
// kernel.
type KernelTap interface {
	// KernelGetsCopies reports whether the kernel's stack receives its
	// own copy of every frame Read returns that was not steered away.
	KernelGetsCopies() bool
}

// TrustedWire is implemented by an in-memory wire whose ends are Skylane
// nexuses (memif): the bytes a Write takes are what the other end's Read
// returns, unchanged and unseen by any device. Over it, packets whose
// senders left their TCP or UDP checksums to the wire
// (channel.FlagCsumPartial) travel as they are, and the receiving nexus
// hands what it reads to its apps as needing no check
// (channel.FlagCsumValid), as Linux's veth carries CHECKSUM_PARTIAL.
type TrustedWire interface {
	// TrustedWire reports whether the link is such a wire now. Immutable.
	TrustedWire() bool
}
