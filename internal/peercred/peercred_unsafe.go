package peercred

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// getsockoptGroups reads SO_PEERGROUPS into buf and returns how many gids
// the kernel has (more than len(buf), with ERANGE, when buf is too short).
func getsockoptGroups(fd int, buf []uint32) (int, error) {
	l := uint32(len(buf) * 4)
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
		uintptr(unsafe.Pointer(unsafe.SliceData(buf))), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return int(l / 4), e
	}
	return int(l / 4), nil
}
