package afxdp

import (
	"encoding/binary"

	"golang.org/x/sys/unix"
)

// The four AF_XDP rings, as the kernel lays them out in memory it shares
// with this process (Documentation/networking/af_xdp.rst):
//
//	struct ring {
//	    __u32 producer;  // written by the producer only; moves forward, wraps at 2^32
//	    __u32 consumer;  // written by the consumer only; moves forward
//	    __u32 flags;     // written by the kernel: XDP_RING_NEED_WAKEUP
//	    desc  descs[size]; // size a power of two; slot of index i is i & (size-1)
//	};
//
// The slots [consumer .. producer-1] hold entries the consumer owns; the
// rest belong to the producer. This process produces on the fill and TX
// rings and consumes the RX and completion rings. The offsets of the fields
// come from getsockopt(XDP_MMAP_OFFSETS).
//
// The kernel is trusted, but what it writes is still read defensively: an
// index that claims more entries than the ring holds is clamped to none,
// and every descriptor is checked against the UMEM layout before the UMEM
// is touched (checkRX, checkComp). The functions below are pure over the
// ring memory, so they are fuzzed without a socket.

const (
	rxDescLen   = 16 // struct xdp_desc: __u64 addr, __u32 len, __u32 options
	addrDescLen = 8  // fill and completion rings: __u64 addr
)

// layout is where the frames live in the UMEM: frames of frameSize bytes
// (a power of two), the RX frames [0, rxEnd) and the TX frames [rxEnd, end).
// Immutable after Open.
type layout struct {
	frameSize uint64
	rxEnd     uint64
	end       uint64
}

func (l layout) chunk(addr uint64) uint64 { return addr &^ (l.frameSize - 1) }

// checkRX validates an RX descriptor: the frame must lie inside one RX
// frame. It returns the frame's chunk (to recycle) and whether the chunk
// is an RX chunk at all (recyclable even when the length is bad).
func (l layout) checkRX(addr uint64, n uint32) (chunk uint64, frameOK, chunkOK bool) {
	if addr >= l.rxEnd {
		return 0, false, false
	}
	chunk = l.chunk(addr)
	return chunk, n > 0 && addr+uint64(n) <= chunk+l.frameSize, true
}

// checkComp validates a completed TX address: the start of a TX frame, as
// Write put it in the TX ring.
func (l layout) checkComp(addr uint64) bool {
	return addr >= l.rxEnd && addr < l.end && addr&(l.frameSize-1) == 0
}

// entries returns how many entries a consumer at cons may take when the
// producer is at prod, in a ring of size slots. Indices wrap at 2^32, so
// the difference is right across the wrap; a difference larger than the
// ring is impossible from an honest producer and counts as none.
func entries(prod, cons, size uint32) (n uint32, ok bool) {
	n = prod - cons
	if n > size {
		return 0, false
	}
	return n, true
}

// rxResult is what readRX did.
type rxResult struct {
	filled    int  // frames copied into bufs[:filled]
	consumed  int  // descriptors taken from the ring
	bad       int  // frames dropped because a descriptor failed checkRX
	badChains int  // frames dropped because their chain was too long (descriptors or bytes)
	refused   int  // frames keep refused (dropped; counted by keep's owner)
	short     bool // a frame did not fit its buffer (dropped; the batch ends there)
	shortLen  int  // that frame's length
	staged    int  // > 0: a frame of this length, longer than lim.maxFrame, was copied into stage; the batch ends there
}

// rxLimits are what readRX needs beyond the ring: how it frames and where
// it puts what it reads.
type rxLimits struct {
	// maxFrame is the longest wire frame (MaxFrameLen). A longer frame is a
	// super packet: it goes whole only into a buffer of at least
	// len(stage) bytes, into stage otherwise (for the caller to split).
	maxFrame int
	// maxDescs is the most descriptors of one frame (multi-buffer,
	// XDP_PKT_CONTD); 1 without XDP_USE_SG.
	maxDescs int
	// stage receives a super packet that its buffer cannot hold; its
	// length is also the most bytes a chain may carry. Nil without
	// multi-buffer: every frame is one descriptor, bounded by its chunk.
	stage []byte
	// keep, if not nil, sees each frame copied into a buffer and may
	// refuse it (the buffer is then reused for the next frame).
	keep func(frame []byte) bool
}

// readRX takes up to avail descriptors from an RX ring's descriptor area,
// starting at index cons, and copies the frames they carry from umem into
// bufs: a frame is one descriptor, or with multi-buffer a chain of them
// (each but the last with XDP_PKT_CONTD in its options). Every
// descriptor's chunk is pushed onto free (up to its capacity) for the fill
// ring. It stops when bufs (or sizes) are full, at a frame too long for its
// buffer, after staging a super packet, or at a chain whose end the kernel
// has not produced yet (left in the ring). A chain that is too long is
// dropped whole, through its last descriptor; *skip carries the dropping
// over to the next call when the ring ends inside it. It never reads
// outside descs or umem, whatever they hold.
func readRX(l layout, descs []byte, mask, cons, avail uint32, umem []byte, bufs [][]byte, sizes []int, lim rxLimits, skip *bool, free *[]uint64) (r rxResult) {
	limit := min(len(bufs), len(sizes))
	maxDescs := max(lim.maxDescs, 1)
	desc := func(i uint32) (addr uint64, n, opts uint32, ok bool) {
		off := int(((cons + i) & mask)) * rxDescLen
		if off+rxDescLen > len(descs) {
			return 0, 0, 0, false // a mask wider than the ring: never from Open, but never a panic
		}
		return binary.NativeEndian.Uint64(descs[off:]), binary.NativeEndian.Uint32(descs[off+8:]), binary.NativeEndian.Uint32(descs[off+12:]), true
	}
	// recycle gives descriptor i's chunk back and reports whether its
	// frame bytes are inside one RX chunk of the UMEM.
	recycle := func(addr uint64, n uint32) bool {
		chunk, frameOK, chunkOK := l.checkRX(addr, n)
		if chunkOK {
			pushFree(free, chunk)
		}
		return frameOK && addr+uint64(n) <= uint64(len(umem))
	}
	for *skip && uint32(r.consumed) < avail {
		addr, n, opts, ok := desc(uint32(r.consumed))
		if !ok {
			return r
		}
		r.consumed++
		recycle(addr, n)
		*skip = opts&unix.XDP_PKT_CONTD != 0
	}
	for uint32(r.consumed) < avail && r.filled < limit {
		// Find the chain's end without consuming anything.
		start := uint32(r.consumed)
		k, total, descsOK, ended := uint32(0), 0, true, false
		for start+k < avail && k < uint32(maxDescs) {
			addr, n, opts, ok := desc(start + k)
			if !ok {
				return r
			}
			k++
			_, frameOK, _ := l.checkRX(addr, n)
			descsOK = descsOK && frameOK && addr+uint64(n) <= uint64(len(umem))
			total += int(n)
			if opts&unix.XDP_PKT_CONTD == 0 {
				ended = true
				break
			}
		}
		if !ended && k < uint32(maxDescs) {
			return r // the rest of the chain is not in the ring yet
		}
		r.consumed += int(k)
		for i := range k {
			addr, n, _, _ := desc(start + i)
			recycle(addr, n)
		}
		switch {
		case !ended:
			r.badChains++
			*skip = true
			for *skip && uint32(r.consumed) < avail {
				addr, n, opts, _ := desc(uint32(r.consumed))
				r.consumed++
				recycle(addr, n)
				*skip = opts&unix.XDP_PKT_CONTD != 0
			}
			continue
		case !descsOK:
			r.bad++
			continue
		case k > 1 && total > len(lim.stage):
			r.badChains++
			continue
		}
		dst, staged := bufs[r.filled], false
		switch {
		case total <= len(dst) && (total <= lim.maxFrame || len(dst) >= len(lim.stage)):
		case total > lim.maxFrame && total <= len(lim.stage):
			dst, staged = lim.stage, true
		default:
			r.short, r.shortLen = true, total
			return r
		}
		off := 0
		for i := range k {
			addr, n, _, _ := desc(start + i)
			off += copy(dst[off:], umem[addr:addr+uint64(n)])
		}
		if staged {
			r.staged = total
			return r
		}
		if lim.keep != nil && !lim.keep(dst[:total]) {
			r.refused++
			continue
		}
		sizes[r.filled] = total
		r.filled++
	}
	return r
}

// readComp takes avail addresses from a completion ring's descriptor area,
// starting at index cons, and pushes the valid ones onto free. It returns
// how many were invalid.
func readComp(l layout, descs []byte, mask, cons, avail uint32, free *[]uint64) (bad int) {
	for i := uint32(0); i < avail; i++ {
		off := int((cons+i)&mask) * addrDescLen
		if off+addrDescLen > len(descs) {
			return bad + int(avail-i)
		}
		addr := binary.NativeEndian.Uint64(descs[off:])
		if !l.checkComp(addr) || !pushFree(free, addr) {
			bad++
		}
	}
	return bad
}

// pushFree appends chunk to free unless free is at capacity: a kernel that
// returned a chunk twice must not grow the list past the frames there are.
func pushFree(free *[]uint64, chunk uint64) bool {
	if len(*free) == cap(*free) {
		return false
	}
	*free = append(*free, chunk)
	return true
}

// putAddr writes an address entry (fill ring) at index i.
func putAddr(descs []byte, mask, i uint32, addr uint64) {
	binary.NativeEndian.PutUint64(descs[int(i&mask)*addrDescLen:], addr)
}

// putTX writes a TX descriptor at index i.
func putTX(descs []byte, mask, i uint32, addr uint64, n uint32) {
	off := int(i&mask) * rxDescLen
	binary.NativeEndian.PutUint64(descs[off:], addr)
	binary.NativeEndian.PutUint32(descs[off+8:], n)
	binary.NativeEndian.PutUint32(descs[off+12:], 0)
}
