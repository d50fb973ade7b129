package afxdp

import (
	"errors"
	"fmt"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The socket options x/sys/unix has no typed wrapper for.

func registerUMEM(fd int, umem []byte, frameSize int) error {
	reg := unix.XDPUmemReg{
		Addr: uint64(uintptr(unsafe.Pointer(&umem[0]))),
		Len:  uint64(len(umem)),
		Size: uint32(frameSize),
	}
	// Pass the size of the struct every kernel since 5.4 knows (without
	// tx_metadata_len, Linux 6.8), so older kernels accept it.
	const regLenV2 = 24
	_, _, errno := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_XDP, unix.XDP_UMEM_REG,
		uintptr(unsafe.Pointer(&reg)), regLenV2, 0)
	if errno != 0 {
		if errno == unix.ENOMEM || errno == unix.EPERM {
			return fmt.Errorf("register %d-byte UMEM: %w (the kernel pins it: raise RLIMIT_MEMLOCK or run as root)", len(umem), errno)
		}
		return fmt.Errorf("register %d-byte UMEM: %w", len(umem), errno)
	}
	return nil
}

func mmapOffsets(fd int) (unix.XDPMmapOffsets, error) {
	var off unix.XDPMmapOffsets
	l := uint32(unsafe.Sizeof(off))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_XDP, unix.XDP_MMAP_OFFSETS,
		uintptr(unsafe.Pointer(&off)), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 {
		return off, fmt.Errorf("get ring offsets: %w", errno)
	}
	if l != uint32(unsafe.Sizeof(off)) {
		// Before Linux 5.4 the offsets had no flags field: no
		// need_wakeup either.
		return off, fmt.Errorf("get ring offsets: %d bytes, want %d (kernel too old: Linux 5.4 or later)", l, unsafe.Sizeof(off))
	}
	return off, nil
}

func kernelStats(fd int) (unix.XDPStatistics, error) {
	var s unix.XDPStatistics
	l := uint32(unsafe.Sizeof(s))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_XDP, unix.XDP_STATISTICS,
		uintptr(unsafe.Pointer(&s)), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 {
		return s, errno
	}
	return s, nil
}

// wakeTX kicks transmission; again reports that the kernel stopped with
// descriptors left (EAGAIN, EBUSY, ENOBUFS: retry later).
func wakeTX(fd int) (again bool, err error) {
	err = unix.Sendto(fd, nil, unix.MSG_DONTWAIT, nil)
	switch {
	case err == nil:
		return false, nil
	case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EBUSY), errors.Is(err, unix.ENOBUFS):
		return true, nil
	}
	return false, err
}

// wakeRX wakes a driver sleeping on an empty fill ring.
func wakeRX(fd int) {
	_, _, _ = unix.Recvfrom(fd, nil, unix.MSG_DONTWAIT)
}

// waitReadable blocks until fd has frames to read, wake is signalled
// (closed = true), or timeout passes (< 0: no limit).
func waitReadable(fd, wake int, timeout time.Duration) (closed bool, err error) {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(wake), Events: unix.POLLIN}}
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	for {
		var ts *unix.Timespec
		if timeout > 0 {
			left := time.Until(deadline)
			if left <= 0 {
				return false, nil
			}
			t := unix.NsecToTimespec(int64(left))
			ts = &t
		}
		_, err := unix.Ppoll(fds, ts, nil)
		if errors.Is(err, unix.EINTR) {
			continue // the Go runtime's preemption signals
		}
		if err != nil {
			return false, err
		}
		if fds[1].Revents != 0 {
			return true, nil
		}
		return false, nil
	}
}
