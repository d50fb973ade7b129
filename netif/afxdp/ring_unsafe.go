package afxdp

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ring is this process's side of one mmapped ring. local is its own index
// (producer for fill/TX, consumer for RX/completion): only this process
// writes it, so it is cached here and stored to shared memory on commit.
type ring struct {
	mem   []byte  // the whole mapping; unmapped by Close
	prod  *uint32 // into mem
	cons  *uint32
	flags *uint32
	descs []byte // size entries
	mask  uint32
	size  uint32
	local uint32
}

// newRing checks the kernel's offsets against the mapping before taking
// pointers into it.
func newRing(mem []byte, off unix.XDPRingOffset, size uint32, descLen int) (ring, error) {
	need := off.Desc + uint64(size)*uint64(descLen)
	for _, o := range []uint64{off.Producer, off.Consumer, off.Flags} {
		if o%4 != 0 || o+4 > uint64(len(mem)) {
			return ring{}, fmt.Errorf("ring offset %d outside the %d-byte mapping", o, len(mem))
		}
	}
	if off.Desc%8 != 0 || need > uint64(len(mem)) {
		return ring{}, fmt.Errorf("ring descriptors at %d+%d outside the %d-byte mapping", off.Desc, need-off.Desc, len(mem))
	}
	r := ring{
		mem:   mem,
		prod:  (*uint32)(unsafe.Pointer(&mem[off.Producer])),
		cons:  (*uint32)(unsafe.Pointer(&mem[off.Consumer])),
		flags: (*uint32)(unsafe.Pointer(&mem[off.Flags])),
		descs: mem[off.Desc:need:need],
		mask:  size - 1,
		size:  size,
	}
	return r, nil
}

// Consumer side (RX, completion).

// available returns how many entries the kernel produced that this
// process has not consumed; ok is false if the kernel's index is bogus.
func (r *ring) available() (uint32, bool) {
	return entries(atomic.LoadUint32(r.prod), r.local, r.size)
}

// release gives n consumed entries back to the kernel.
func (r *ring) release(n uint32) {
	r.local += n
	atomic.StoreUint32(r.cons, r.local)
}

// Producer side (fill, TX).

// room returns how many entries this process may produce.
func (r *ring) room() uint32 {
	used := r.local - atomic.LoadUint32(r.cons)
	if used > r.size {
		return 0 // bogus consumer index: produce nothing rather than overwrite
	}
	return r.size - used
}

// pending returns how many produced entries the kernel has not consumed.
func (r *ring) pending() uint32 {
	used := r.local - atomic.LoadUint32(r.cons)
	return min(used, r.size)
}

// submit publishes n entries written after the producer index.
func (r *ring) submit(n uint32) {
	r.local += n
	atomic.StoreUint32(r.prod, r.local)
}

// needWakeup reports whether the kernel asks for a system call to process
// this ring (XDP_USE_NEED_WAKEUP).
func (r *ring) needWakeup() bool {
	return atomic.LoadUint32(r.flags)&unix.XDP_RING_NEED_WAKEUP != 0
}
