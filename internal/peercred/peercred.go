// Package peercred reads who is at the other end of a Unix socket: the
// credentials the kernel recorded when the peer connected (SO_PEERCRED:
// uid, gid, pid; SO_PEERGROUPS: supplementary groups). They are the
// kernel's, not the peer's word: a process cannot forge them, and they stay
// those of the connecting process even if it later changes its ids or
// hands the socket on.
//
// Invariants: only syscalls on a descriptor the caller owns; no descriptor
// is made or closed here.
package peercred

import (
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// Cred are a peer's credentials.
type Cred struct {
	UID, GID uint32
	PID      int32
	Groups   []uint32 // supplementary groups, nil if the kernel has none to tell
}

// maxGroups bounds SO_PEERGROUPS: Linux allows 65536 supplementary groups
// (NGROUPS_MAX), which is 256 KiB of gids.
const maxGroups = 65536

// Get returns the credentials of c's peer.
func Get(c *net.UnixConn) (Cred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	var (
		cr   Cred
		serr error
	)
	err = rc.Control(func(fd uintptr) {
		var u *unix.Ucred
		if u, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); serr != nil {
			serr = fmt.Errorf("SO_PEERCRED: %w", serr)
			return
		}
		cr = Cred{UID: u.Uid, GID: u.Gid, PID: u.Pid}
		cr.Groups, serr = peerGroups(int(fd))
	})
	if err = errors.Join(err, serr); err != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	return cr, nil
}

// peerGroups reads SO_PEERGROUPS, growing its buffer as the kernel says
// (ERANGE with the length it needs).
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]uint32, 64)
	for {
		n, err := getsockoptGroups(fd, buf)
		if err == unix.ERANGE && n > len(buf) && n <= maxGroups {
			buf = make([]uint32, n)
			continue
		}
		if err == unix.ENOPROTOOPT {
			return nil, nil // a kernel before 4.13: primary gid only
		}
		if err != nil {
			return nil, fmt.Errorf("SO_PEERGROUPS: %w", err)
		}
		if n == 0 {
			return nil, nil
		}
		return buf[:n:n], nil
	}
}
