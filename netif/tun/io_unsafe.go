package tun

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// readv reads one frame from fd into a then b, through the caller's iovec
// array so nothing is allocated (unix.Readv builds its iovecs on the heap).
func readv(fd int, a, b []byte, iov *[2]unix.Iovec) (int, error) {
	setIovec(&iov[0], a)
	setIovec(&iov[1], b)
	n, _, errno := unix.Syscall(unix.SYS_READV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), 2)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// writev writes a then b to fd as one frame; see readv.
func writev(fd int, a, b []byte, iov *[2]unix.Iovec) (int, error) {
	setIovec(&iov[0], a)
	setIovec(&iov[1], b)
	cnt := 2
	if len(b) == 0 {
		cnt = 1
	}
	n, _, errno := unix.Syscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(cnt))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

func setIovec(v *unix.Iovec, b []byte) {
	v.Base = unsafe.SliceData(b)
	v.SetLen(len(b))
}
