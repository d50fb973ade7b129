// Package shm holds the system calls behind Skylane's shared memory: memfd
// regions, their mappings, sealing, hole punching, eventfds and passing file
// descriptors over Unix sockets. It is the only package that calls mmap.
//
// Invariants:
//   - A Region's memfd is sealed against shrinking and growing before any other
//     process can see it, so a peer holding the fd cannot truncate it and make
//     the nexus fault (SIGBUS) on a mapped page.
//   - Every Mapping is unmapped exactly once by Unmap; a Region's fd is closed
//     exactly once by Close.
package shm

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// PageSize is the system page size, read once at start-up (the OS forces it).
var PageSize = os.Getpagesize()

// Region is a memfd of a fixed size. Its pages are allocated on first touch and
// can be returned to the OS with Punch.
type Region struct {
	fd   int
	size int
	name string
}

// RegionOptions configures NewRegion.
type RegionOptions struct {
	Name      string // shown in /proc/PID/fd; for debugging only
	Size      int    // bytes; a multiple of the page size (or of 2 MiB with HugePages)
	HugePages bool   // back the region with huge pages (MFD_HUGETLB)
	// ReadOnlyPeers seals the region against new writable mappings
	// (F_SEAL_FUTURE_WRITE) once the creator has mapped it with MapCreator.
	ReadOnlyPeers bool
}

// NewRegion creates a memfd of opts.Size bytes, sealed against resizing.
func NewRegion(opts RegionOptions) (*Region, error) {
	if opts.Size <= 0 || opts.Size%PageSize != 0 {
		return nil, fmt.Errorf("shm region %q: size %d is not a positive multiple of the page size %d", opts.Name, opts.Size, PageSize)
	}
	flags := unix.MFD_CLOEXEC | unix.MFD_ALLOW_SEALING
	if opts.HugePages {
		flags |= unix.MFD_HUGETLB
	}
	fd, err := unix.MemfdCreate("skylane-"+opts.Name, flags)
	if err != nil {
		if opts.HugePages {
			return nil, fmt.Errorf("shm region %q: memfd with huge pages: %w (reserve some in /proc/sys/vm/nr_hugepages or turn huge pages off)", opts.Name, err)
		}
		return nil, fmt.Errorf("shm region %q: memfd_create: %w", opts.Name, err)
	}
	if err := unix.Ftruncate(fd, int64(opts.Size)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("shm region %q: ftruncate to %d bytes: %w", opts.Name, opts.Size, err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("shm region %q: seal size: %w", opts.Name, err)
	}
	return &Region{fd: fd, size: opts.Size, name: opts.Name}, nil
}

// FD returns the memfd. It stays owned by the Region.
func (r *Region) FD() int { return r.fd }

// Size returns the region's size in bytes.
func (r *Region) Size() int { return r.size }

// SealFutureWrite forbids any new writable mapping of the region (existing
// ones keep working). Used for tables the nexus writes and apps only read.
func (r *Region) SealFutureWrite() error {
	if _, err := unix.FcntlInt(uintptr(r.fd), unix.F_ADD_SEALS, unix.F_SEAL_FUTURE_WRITE|unix.F_SEAL_SEAL); err != nil {
		return fmt.Errorf("shm region %q: seal future writes: %w", r.name, err)
	}
	return nil
}

// Punch returns the pages of [off, off+n) to the OS. Later reads see zeros.
func (r *Region) Punch(off, n int) error {
	if off < 0 || n < 0 || off+n > r.size {
		return fmt.Errorf("shm region %q: punch [%d,%d) outside %d bytes", r.name, off, off+n, r.size)
	}
	if err := unix.Fallocate(r.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(off), int64(n)); err != nil {
		return fmt.Errorf("shm region %q: punch hole [%d,%d): %w", r.name, off, off+n, err)
	}
	return nil
}

// AllocatedBytes reports how much memory the OS holds for the region now
// (st_blocks), which is how tests see that a released segment really went back.
func (r *Region) AllocatedBytes() (int64, error) {
	return AllocatedBytes(r.fd)
}

// AllocatedBytes reports the bytes the OS holds for the file behind fd.
func AllocatedBytes(fd int) (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("fstat: %w", err)
	}
	return st.Blocks * 512, nil
}

// Close closes the memfd. Mappings made from it stay valid until unmapped.
func (r *Region) Close() error {
	if r.fd < 0 {
		return nil
	}
	err := unix.Close(r.fd)
	r.fd = -1
	return err
}

// Mapping is a shared mapping of (part of) a memfd.
type Mapping struct {
	b []byte
}

// Map maps size bytes of fd at offset off, shared. writable selects
// PROT_READ|PROT_WRITE, else PROT_READ.
func Map(fd int, off int64, size int, writable bool) (*Mapping, error) {
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	b, err := unix.Mmap(fd, off, size, prot, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes at offset %d: %w", size, off, err)
	}
	return &Mapping{b: b}, nil
}

// Bytes returns the mapped memory. It is valid until Unmap.
func (m *Mapping) Bytes() []byte { return m.b }

// Unmap releases the mapping. Calling it twice is harmless.
func (m *Mapping) Unmap() error {
	if m == nil || m.b == nil {
		return nil
	}
	err := unix.Munmap(m.b)
	m.b = nil
	if err != nil {
		return fmt.Errorf("munmap: %w", err)
	}
	return nil
}

// ErrClosed is returned by an EventFD that was closed.
var ErrClosed = errors.New("shm: closed")

// FileSize returns the size of the file behind fd.
func FileSize(fd int) (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("fstat fd %d: %w", fd, err)
	}
	return st.Size, nil
}
