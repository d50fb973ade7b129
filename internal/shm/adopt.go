package shm

import (
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"
)

// Hand-over of regions between two nexus processes (a takeover): a region
// the nexus writes and apps only read cannot be sealed against future
// writes, or the next nexus could never map it writable again. Instead
// its memfd is made reopenable by its owner only (RestrictPeers) and
// peers get a read-only open of it (ReadOnlyFD): a shared mapping of a
// read-only file can never become writable (mmap and mprotect refuse),
// and the peer cannot reopen the file for writing through /proc.

// RestrictPeers makes the region's file reopenable by its owner only
// (mode 0600): a peer holding a read-only descriptor cannot reopen it
// read-write through /proc/self/fd.
func (r *Region) RestrictPeers() error {
	if err := unix.Fchmod(r.fd, 0o600); err != nil {
		return fmt.Errorf("shm region %q: restrict to owner: %w", r.name, err)
	}
	return nil
}

// ReadOnlyFD opens the region again, read-only (close-on-exec), for a
// peer that may only read it. The caller owns the descriptor.
func (r *Region) ReadOnlyFD() (int, error) {
	fd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(r.fd), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("shm region %q: reopen read-only: %w", r.name, err)
	}
	return fd, nil
}

// AdoptRegion takes ownership of fd, a region another process made and
// handed over, checking it is a sealed-size file of want bytes (so that
// no mapping of it can fault). On error fd is left to the caller.
func AdoptRegion(fd int, name string, want int) (*Region, error) {
	size, err := FileSize(fd)
	if err != nil {
		return nil, fmt.Errorf("shm region %q: %w", name, err)
	}
	if size != int64(want) || want <= 0 || want%PageSize != 0 {
		return nil, fmt.Errorf("shm region %q: %d bytes, want %d", name, size, want)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return nil, fmt.Errorf("shm region %q: get seals: %w", name, err)
	}
	if seals&(unix.F_SEAL_SHRINK|unix.F_SEAL_GROW) != unix.F_SEAL_SHRINK|unix.F_SEAL_GROW {
		return nil, fmt.Errorf("shm region %q: size not sealed (seals %#x)", name, seals)
	}
	return &Region{fd: fd, size: want, name: name}, nil
}
