package shm

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// MaxFDs bounds how many descriptors one message may carry.
const MaxFDs = 16

// SendFDs sends msg with fds attached (SCM_RIGHTS). The fds stay owned by the
// caller.
func SendFDs(c *net.UnixConn, msg []byte, fds []int) error {
	if len(fds) > MaxFDs {
		return fmt.Errorf("send fds: %d descriptors, at most %d", len(fds), MaxFDs)
	}
	n, oobn, err := c.WriteMsgUnix(msg, unix.UnixRights(fds...), nil)
	if err != nil {
		return fmt.Errorf("send fds: %w", err)
	}
	if n != len(msg) || oobn == 0 && len(fds) > 0 {
		return fmt.Errorf("send fds: short write (%d of %d bytes)", n, len(msg))
	}
	return nil
}

// RecvFDs receives one message of at most maxMsg bytes and its descriptors.
// The caller owns the returned fds (they are close-on-exec).
func RecvFDs(c *net.UnixConn, maxMsg int) ([]byte, []int, error) {
	msg := make([]byte, maxMsg)
	oob := make([]byte, RightsSpace(MaxFDs))
	n, oobn, flags, _, err := c.ReadMsgUnix(msg, oob)
	if err != nil {
		return nil, nil, fmt.Errorf("receive fds: %w", err)
	}
	fds, err := ParseRights(oob[:oobn])
	if err != nil {
		return nil, nil, fmt.Errorf("receive fds: %w", err)
	}
	if Truncated(flags) {
		closeAll(fds)
		return nil, nil, fmt.Errorf("receive fds: message truncated (more than %d bytes or %d fds)", maxMsg, MaxFDs)
	}
	for _, fd := range fds {
		unix.CloseOnExec(fd)
	}
	return msg[:n], fds, nil
}

// ParseRights returns the descriptors of a control message that holds
// SCM_RIGHTS only; on error it closes those it had taken.
func ParseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("control message: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		r, err := unix.ParseUnixRights(&m)
		if err != nil {
			closeAll(fds)
			return nil, fmt.Errorf("control message: %w", err)
		}
		fds = append(fds, r...)
	}
	return fds, nil
}

// Truncated reports whether the flags a ReadMsgUnix returned say the
// message or its control message was cut (MSG_TRUNC, MSG_CTRUNC): a read
// with no control buffer gets MSG_CTRUNC when the peer sent descriptors,
// which the kernel then closes.
func Truncated(flags int) bool { return flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 }

// RightsSpace is the control buffer size that holds n descriptors.
func RightsSpace(n int) int { return unix.CmsgSpace(n * 4) }

// Rights encodes fds as an SCM_RIGHTS control message for WriteMsgUnix.
func Rights(fds ...int) []byte { return unix.UnixRights(fds...) }

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// CloseFD closes a descriptor received by RecvFDs that is not kept.
func CloseFD(fd int) error { return unix.Close(fd) }

// Dup duplicates fd (close-on-exec), e.g. to hand an in-process app its own
// copy of a region's memfd.
func Dup(fd int) (int, error) {
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("dup fd %d: %w", fd, err)
	}
	return nfd, nil
}

// SocketPair returns two connected SOCK_SEQPACKET Unix sockets as files, one
// for this process and one to hand a child (exec.Cmd.ExtraFiles).
func SocketPair() (*os.File, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "skylane-ctl"), os.NewFile(uintptr(fds[1]), "skylane-ctl-peer"), nil
}

// UnixConn turns a socket file into a *net.UnixConn; f may be closed after.
func UnixConn(f *os.File) (*net.UnixConn, error) {
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("unix conn from %s: %w", f.Name(), err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("%s is not a Unix socket", f.Name())
	}
	return uc, nil
}
