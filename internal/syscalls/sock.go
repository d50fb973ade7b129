package syscalls

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ForceRcvBuf sets c's receive buffer to size bytes past rmem_max
// (SO_RCVBUFFORCE; needs CAP_NET_ADMIN).
func ForceRcvBuf(c syscall.Conn, size int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("SO_RCVBUFFORCE: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
	}); err != nil {
		return fmt.Errorf("SO_RCVBUFFORCE: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("SO_RCVBUFFORCE: %w", serr)
	}
	return nil
}

// UDPBatch is a kernel UDP socket read in batches with recvmmsg, which
// x/sys/unix does not wrap: the bench's kernel baseline. The socket
// belongs to the network namespace of the thread that opened it.
type UDPBatch struct {
	fd   int
	hdrs []mmsghdr
	iovs []unix.Iovec
	bufs [][]byte
}

// mmsghdr is struct mmsghdr: Go pads it to the alignment of Msghdr's
// pointers, as C does. The pointers in the headers point into Go memory
// the UDPBatch keeps alive.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

// ListenUDPBatch opens an IPv4 UDP socket bound to addr that receives up to
// n datagrams of up to size bytes per Recv, with a receive buffer forced to
// rcvbuf bytes (best effort: it only helps) and Recv waiting at most wait.
func ListenUDPBatch(addr netip.AddrPort, n, size, rcvbuf int, wait time.Duration) (*UDPBatch, error) {
	if !addr.Addr().Is4() || n <= 0 || size <= 0 {
		return nil, fmt.Errorf("udp batch socket: want an IPv4 address and a batch, got %v, %d of %d bytes", addr, n, size)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("udp batch socket: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf)
	tv := unix.NsecToTimeval(int64(wait))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("udp batch socket: SO_RCVTIMEO: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("udp batch socket: bind %v: %w", addr, err)
	}
	b := &UDPBatch{fd: fd, hdrs: make([]mmsghdr, n), iovs: make([]unix.Iovec, n), bufs: make([][]byte, n)}
	for i := range b.hdrs {
		b.bufs[i] = make([]byte, size)
		b.iovs[i].Base = &b.bufs[i][0]
		b.iovs[i].SetLen(size)
		b.hdrs[i].hdr.Iov = &b.iovs[i]
		b.hdrs[i].hdr.SetIovlen(1)
	}
	return b, nil
}

// Recv blocks (up to the wait given to ListenUDPBatch) for one datagram,
// then takes what else is queued, up to the batch, and returns how many it
// took; 0 and no error when the wait ran out or a signal came.
func (b *UDPBatch) Recv() (int, error) {
	r, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(b.fd), uintptr(unsafe.Pointer(&b.hdrs[0])),
		uintptr(len(b.hdrs)), unix.MSG_WAITFORONE, 0, 0)
	switch {
	case errno == 0:
		return int(r), nil
	case errors.Is(errno, unix.EAGAIN) || errors.Is(errno, unix.EINTR):
		return 0, nil
	}
	return 0, fmt.Errorf("recvmmsg: %w", errno)
}

// Close closes the socket.
func (b *UDPBatch) Close() error { return unix.Close(b.fd) }
