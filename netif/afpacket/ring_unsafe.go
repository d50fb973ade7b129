package afpacket

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Status words shared with the kernel (a block's block_status, a transmit
// slot's tp_status) are read and written atomically: they hand the memory
// around them from one side to the other, so they order the plain accesses
// to it, as the smp_rmb/smp_wmb pairs of the kernel side do. b is a block
// or slot of the mapping, which is page aligned, so the words are aligned.

func loadStatus(b []byte, off int) uint32 {
	_ = b[off+3]
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&b[off])))
}

func storeStatus(b []byte, off int, v uint32) {
	_ = b[off+3]
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&b[off])), v)
}

// mmsghdr is struct mmsghdr: x/sys has no sendmmsg.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

// sendmmsg sends msgs[:n] and returns how many the kernel took.
func sendmmsg(fd int, msgs []mmsghdr) (int, unix.Errno) {
	r, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])),
		uintptr(len(msgs)), unix.MSG_DONTWAIT, 0, 0)
	return int(r), errno
}

// setMsg points msg at the two buffers a and b through iov (two Iovecs).
func setMsg(msg *mmsghdr, iov []unix.Iovec, a, b []byte) {
	iov[0].Base = unsafe.SliceData(a)
	iov[0].SetLen(len(a))
	iov[1].Base = unsafe.SliceData(b)
	iov[1].SetLen(len(b))
	msg.hdr = unix.Msghdr{Iov: &iov[0]}
	msg.hdr.SetIovlen(2)
}

// clearMsg drops msg's references to caller memory: the Link keeps none
// after Write returns.
func clearMsg(msg *mmsghdr, iov []unix.Iovec) {
	*msg = mmsghdr{}
	iov[0], iov[1] = unix.Iovec{}, unix.Iovec{}
}

// kick asks the kernel to send the transmit ring's requested slots,
// without waiting for them to complete.
func kick(fd int) unix.Errno {
	_, _, errno := unix.Syscall6(unix.SYS_SENDTO, uintptr(fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
	return errno
}

// sendmsg2 sends a then b as one frame with sendmsg(2), through the
// caller's msg and iov so nothing is allocated, and clears them after: the
// Link keeps no reference to caller memory.
func sendmsg2(fd int, msg *unix.Msghdr, iov *[2]unix.Iovec, a, b []byte) unix.Errno {
	iov[0].Base = unsafe.SliceData(a)
	iov[0].SetLen(len(a))
	iov[1].Base = unsafe.SliceData(b)
	iov[1].SetLen(len(b))
	*msg = unix.Msghdr{Iov: &iov[0]}
	msg.SetIovlen(2)
	_, _, errno := unix.Syscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(msg)), unix.MSG_DONTWAIT)
	*msg = unix.Msghdr{}
	iov[0], iov[1] = unix.Iovec{}, unix.Iovec{}
	return errno
}
