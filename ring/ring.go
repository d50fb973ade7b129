// Package ring is the single-producer, single-consumer ring that carries
// packet slots between the nexus and an application, in shared memory.
//
// Memory layout of one ring (native little-endian, offsets in bytes, each
// group on its own 64-byte cache line so the two sides never write the same
// line):
//
//	0x000  prod   uint32  written by the producer only
//	0x004  pflags uint32  written by the producer only (FlagNeedRoom)
//	0x040  cons   uint32  written by the consumer only
//	0x080  flags  uint32  written by the consumer only (FlagNeedWakeup)
//	0x0C0  magic  uint32  written once by the creator (Init); informational
//	0x0C4  size   uint32  written once by the creator; informational
//	0x100  slots  size × 8 bytes: Slot{Index uint32, Len uint16, Flags uint16}
//
// The contract, netmap style, with free-running uint32 indices:
//
//	slots [cons, prod)        are owned by the consumer (filled, not yet taken)
//	slots [prod, cons+size)   are owned by the producer (free to fill)
//
// Each side keeps its own index in private memory and only ever stores it
// into the ring; it never reads it back, so a peer that scribbles over it
// hurts only itself. The other side's index is read with one atomic load per
// refresh and validated: it may only move forward and never past what this
// side made available. A violation is ErrCorrupt and the ring is unusable.
// Slots written by the other side are read with one 8-byte load each, so a
// slot is copied before it is checked and cannot change under the check.
//
// Batching: Reserve/Commit on the producer and Peek/Release on the consumer
// touch the shared indices once per batch, not once per slot, and a cached
// copy of the other side's index avoids even that while it suffices.
//
// Wake-ups go both ways. A consumer about to sleep for slots sets
// FlagNeedWakeup, re-checks, then blocks on its eventfd; the producer checks
// the flag after Commit and signals only then. A producer about to sleep
// for room (ring full) sets FlagNeedRoom in its own word, re-checks, then
// blocks; the consumer checks it after Release and signals only then. Each
// side stores its flag before it re-reads the other's index, and the other
// stores its index before it reads the flag (all sequentially consistent
// atomics), so at least one of them sees the other: no wake-up is lost. A
// busy pair sets no flag and makes no system call. A flag word is only ever
// tested for its bit: any value a peer writes there costs at most a
// signal, never a wrong index.
package ring

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Layout offsets; see the package comment.
const (
	offProd   = 0x000
	offPFlags = 0x004
	offCons   = 0x040
	offFlags  = 0x080
	offMagic  = 0x0C0
	offSize   = 0x0C4
	HeaderLen = 0x100
	SlotLen   = 8

	// Magic marks an initialised ring ("SKYR", layout version in the low
	// byte). 2: the producer's FlagNeedRoom; a peer of version 1 would
	// never answer it, so it is refused at attach.
	Magic = 0x534B5902

	// MinSize and MaxSize bound the number of slots (docs/design.md §3).
	MinSize = 2
	MaxSize = 16384
)

// FlagNeedWakeup in the consumer's flags word asks the producer to signal
// the consumer's eventfd after its next commit.
const FlagNeedWakeup = 1

// FlagNeedRoom in the producer's flags word asks the consumer to signal the
// producer's eventfd after its next release: the producer found the ring
// full and sleeps until there is room.
const FlagNeedRoom = 1

// ErrCorrupt means the other side moved an index out of its allowed range.
var ErrCorrupt = errors.New("ring: peer index out of range")

// ErrNotRing means the memory does not hold an initialised ring of the
// expected size.
var ErrNotRing = errors.New("ring: memory is not an initialised ring")

// Slot is one ring entry: a buffer index in the pool, the bytes used in it
// and per-packet flags (meaning set by the ring's user).
type Slot struct {
	Index uint32
	Len   uint16
	Flags uint16
}

func (s Slot) pack() uint64 {
	return uint64(s.Index) | uint64(s.Len)<<32 | uint64(s.Flags)<<48
}

func unpack(v uint64) Slot {
	return Slot{Index: uint32(v), Len: uint16(v >> 32), Flags: uint16(v >> 48)}
}

// MemSize returns the bytes a ring of size slots takes.
func MemSize(size int) int { return HeaderLen + size*SlotLen }

// ValidSize reports whether size is a power of two in [MinSize, MaxSize].
func ValidSize(size int) bool {
	return size >= MinSize && size <= MaxSize && size&(size-1) == 0
}

// Init writes an empty ring of size slots into mem. Only the creator (the
// nexus) calls it, before sharing mem.
func Init(mem []byte, size int) error {
	if !ValidSize(size) {
		return fmt.Errorf("ring size %d: must be a power of two in [%d, %d]", size, MinSize, MaxSize)
	}
	if len(mem) < MemSize(size) {
		return fmt.Errorf("ring of %d slots needs %d bytes, have %d", size, MemSize(size), len(mem))
	}
	clear(mem[:MemSize(size)])
	h := header(mem)
	atomic.StoreUint32(h.word(offMagic), Magic)
	atomic.StoreUint32(h.word(offSize), uint32(size))
	return nil
}

type header []byte

func (h header) word(off int) *uint32 { return (*uint32)(unsafe.Pointer(&h[off])) }

// view is what both endpoints share: the index words and the slot array.
type view struct {
	prod   *uint32
	cons   *uint32
	flags  *uint32 // the consumer's
	pflags *uint32 // the producer's
	slots  []uint64
	mask   uint32
	size   uint32
}

func newView(mem []byte, size int) (view, error) {
	if !ValidSize(size) {
		return view{}, fmt.Errorf("ring size %d: must be a power of two in [%d, %d]", size, MinSize, MaxSize)
	}
	if len(mem) < MemSize(size) {
		return view{}, fmt.Errorf("ring of %d slots needs %d bytes, have %d", size, MemSize(size), len(mem))
	}
	if uintptr(unsafe.Pointer(&mem[0]))%64 != 0 {
		return view{}, fmt.Errorf("ring memory must be 64-byte aligned")
	}
	h := header(mem)
	// A ring the creator did not Init (or one of another size) is refused
	// at attach; after that the words are never read again.
	if m, n := atomic.LoadUint32(h.word(offMagic)), atomic.LoadUint32(h.word(offSize)); m != Magic || n != uint32(size) {
		return view{}, fmt.Errorf("%w: magic %#x size %d, want %#x size %d", ErrNotRing, m, n, Magic, size)
	}
	return view{
		prod:   h.word(offProd),
		pflags: h.word(offPFlags),
		cons:   h.word(offCons),
		flags:  h.word(offFlags),
		slots:  unsafe.Slice((*uint64)(unsafe.Pointer(&mem[HeaderLen])), size),
		mask:   uint32(size - 1),
		size:   uint32(size),
	}, nil
}

// Size returns the number of slots.
func (v *view) Size() int { return int(v.size) }
