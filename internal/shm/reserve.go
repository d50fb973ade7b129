package shm

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Reservation is a range of address space with nothing behind it (PROT_NONE)
// into which segments of a memfd are mapped and unmapped one at a time, so a
// region keeps one contiguous address range while its segments come and go.
type Reservation struct {
	base unsafe.Pointer
	size int
	b    []byte
}

// Reserve reserves size bytes of address space.
func Reserve(size int) (*Reservation, error) {
	b, err := unix.Mmap(-1, 0, size, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("reserve %d bytes of address space: %w", size, err)
	}
	return &Reservation{base: unsafe.Pointer(&b[0]), size: size, b: b}, nil
}

// Bytes returns the whole reserved range. Only the parts mapped with MapAt
// may be touched.
func (r *Reservation) Bytes() []byte { return r.b }

// MapAt maps [fileOff, fileOff+n) of fd at offset off of the reservation.
func (r *Reservation) MapAt(off int, fd int, fileOff int64, n int, writable bool) error {
	if off < 0 || n <= 0 || off+n > r.size {
		return fmt.Errorf("map [%d,%d) outside the %d-byte reservation", off, off+n, r.size)
	}
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	_, err := unix.MmapPtr(fd, fileOff, unsafe.Add(r.base, off), uintptr(n), prot, unix.MAP_SHARED|unix.MAP_FIXED)
	if err != nil {
		return fmt.Errorf("map segment at %d (%d bytes): %w", off, n, err)
	}
	return nil
}

// UnmapAt puts [off, off+n) back to reserved, inaccessible address space.
func (r *Reservation) UnmapAt(off, n int) error {
	if off < 0 || n <= 0 || off+n > r.size {
		return fmt.Errorf("unmap [%d,%d) outside the %d-byte reservation", off, off+n, r.size)
	}
	_, err := unix.MmapPtr(-1, 0, unsafe.Add(r.base, off), uintptr(n), unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED|unix.MAP_NORESERVE)
	if err != nil {
		return fmt.Errorf("unmap segment at %d (%d bytes): %w", off, n, err)
	}
	return nil
}

// Release gives the whole range back. Calling it twice is harmless.
func (r *Reservation) Release() error {
	if r == nil || r.b == nil {
		return nil
	}
	err := unix.Munmap(r.b)
	r.b = nil
	if err != nil {
		return fmt.Errorf("release reservation: %w", err)
	}
	return nil
}
