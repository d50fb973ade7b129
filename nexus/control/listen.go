package control

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/skylane/skylane/internal/shm"
	"github.com/skylane/skylane/internal/syscalls"
)

// ErrNexusRunning: another live nexus serves the socket path.
var ErrNexusRunning = errors.New("another nexus serves this socket")

// SocketMode is the control socket's mode: the nexus's user and group may
// connect (connecting needs write permission), nobody else.
const SocketMode = 0o660

// Socket is a nexus's control socket file, with the lock that says a live
// nexus owns the path: PATH.lock, held with flock(2) for the nexus's life.
// The kernel drops the lock when the process dies, however it dies, so a
// nexus that starts after a crash finds the lock free and the socket file
// stale, and replaces it at once.
type Socket struct {
	*net.UnixListener // for Serve; closing it removes the socket file

	path string
	lock *os.File // flocked; nil once closed
	once sync.Once
}

// ListenSocket makes the control socket at path, mode SocketMode, owned by
// group gid (-1: the process's group), for Serve. A socket file left by a
// dead nexus is replaced; a live nexus's is refused with ErrNexusRunning,
// and anything that is not a socket is left alone and refused. The caller
// closes the Socket, which removes the socket file and the lock file.
func ListenSocket(path string, gid int) (*Socket, error) {
	lock, err := lockPath(path + ".lock")
	if err != nil {
		return nil, err
	}
	s := &Socket{path: path, lock: lock}
	if err := s.listen(gid); err != nil {
		s.unlock()
		return nil, err
	}
	return s, nil
}

// lockPath opens and flocks the lock file at p, retrying when the file it
// locked was removed by the nexus that held it (it unlinks, then unlocks):
// only the lock on the file now at p counts.
func lockPath(p string) (*os.File, error) {
	for range 8 {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("control socket: lock %s: %w (is its directory there and writable?)", p, err)
		}
		if err := syscalls.TryLock(f); err != nil {
			b := make([]byte, 32)
			n, _ := f.ReadAt(b, 0)
			f.Close()
			if errors.Is(err, syscalls.ErrLocked) {
				return nil, fmt.Errorf("%w: %s is held by pid %s: stop that nexus first, or give this one another --socket",
					ErrNexusRunning, p, strings.TrimSpace(string(b[:n])))
			}
			return nil, fmt.Errorf("control socket: lock %s: %w", p, err)
		}
		held, herr := f.Stat()
		now, nerr := os.Stat(p)
		if herr == nil && nerr == nil && os.SameFile(held, now) {
			f.Truncate(0)
			f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
			return f, nil
		}
		f.Close() // removed under us: lock the new one
	}
	return nil, fmt.Errorf("control socket: lock %s: it keeps being replaced; is another nexus restarting in a loop?", p)
}

// listen replaces a stale socket file and listens at s.path.
func (s *Socket) listen(gid int) error {
	fi, err := os.Lstat(s.path)
	switch {
	case err == nil && fi.Mode().Type() != os.ModeSocket:
		return fmt.Errorf("control socket: %s exists and is not a socket (%v): remove it or choose another --socket", s.path, fi.Mode().Type())
	case err == nil:
		// We hold the lock, so no nexus of ours is alive on it; a process
		// that serves it without the lock (an older nexus) still answers.
		c, derr := net.DialTimeout("unixpacket", s.path, time.Second)
		if derr == nil {
			c.Close()
			return fmt.Errorf("%w: something answers on %s without holding %s.lock: stop it first", ErrNexusRunning, s.path, s.path)
		}
		if err := os.Remove(s.path); err != nil {
			return fmt.Errorf("control socket: remove stale %s: %w", s.path, err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("control socket: %w", err)
	}
	// The socket is made with the umask's mode: make it closed to all but
	// us until it has its group and mode, so no app connects in between.
	old := syscalls.Umask(0o177)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: s.path, Net: "unixpacket"})
	syscalls.Umask(old)
	if err != nil {
		return fmt.Errorf("control socket: listen: %w", err)
	}
	if err := os.Chown(s.path, -1, gid); err != nil {
		ln.Close()
		return fmt.Errorf("control socket: give %s group %d: %w", s.path, gid, err)
	}
	if err := os.Chmod(s.path, SocketMode); err != nil {
		ln.Close()
		return fmt.Errorf("control socket: chmod %s: %w", s.path, err)
	}
	s.UnixListener = ln
	return nil
}

// Path returns the socket's path.
func (s *Socket) Path() string { return s.path }

// Close closes the listener (if Serve has not), which removes the socket
// file, then removes the lock file and releases the lock. Safe to call more
// than once.
func (s *Socket) Close() error {
	var err error
	s.once.Do(func() {
		if cerr := s.UnixListener.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) {
			err = fmt.Errorf("control socket: close: %w", cerr)
		}
		s.unlock()
	})
	return err
}

// unlock removes the lock file, then releases the lock: whoever locked the
// old file meanwhile sees it gone and locks the new one (lockPath).
func (s *Socket) unlock() {
	os.Remove(s.path + ".lock")
	s.lock.Close()
}

// ExportFDs returns duplicates of the listening socket's and the lock
// file's descriptors (a takeover: the lock is held by the open file, so
// the new process holds it as long as it keeps its duplicate). The
// caller owns them.
func (s *Socket) ExportFDs() (ln, lock int, err error) {
	if ln, err = dupConn(s.UnixListener); err != nil {
		return -1, -1, fmt.Errorf("control socket: export: %w", err)
	}
	if lock, err = shm.Dup(int(s.lock.Fd())); err != nil {
		shm.CloseFD(ln)
		return -1, -1, fmt.Errorf("control socket: export lock: %w", err)
	}
	return ln, lock, nil
}

// AdoptSocket wraps the descriptors ExportFDs returned in another process
// (it takes ownership of them, closing them on failure).
func AdoptSocket(path string, lnFD, lockFD int) (*Socket, error) {
	lock := os.NewFile(uintptr(lockFD), path+".lock")
	f := os.NewFile(uintptr(lnFD), path)
	l, err := net.FileListener(f) // a duplicate
	f.Close()
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("control socket: adopt %s: %w", path, err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		lock.Close()
		return nil, fmt.Errorf("control socket: adopt %s: not a Unix socket", path)
	}
	// The old nexus made the file: this one removes it when it stops.
	ul.SetUnlinkOnClose(true)
	lock.Truncate(0)
	lock.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return &Socket{UnixListener: ul, path: path, lock: lock}, nil
}

// Abandon closes the socket's descriptors without removing its file or
// its lock file: another process serves it now (a takeover).
func (s *Socket) Abandon() {
	s.once.Do(func() {
		s.UnixListener.SetUnlinkOnClose(false)
		s.UnixListener.Close()
		s.lock.Close()
	})
}
