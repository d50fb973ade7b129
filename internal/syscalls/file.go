package syscalls

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ErrLocked is returned by TryLock when another open file description
// holds the lock.
var ErrLocked = errors.New("file is locked by another process")

// TryLock takes an exclusive flock on f without waiting; ErrLocked if it is
// held. The lock goes with f's last descriptor.
func TryLock(f *os.File) error {
	err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return fmt.Errorf("flock %s: %w", f.Name(), ErrLocked)
	}
	if err != nil {
		return fmt.Errorf("flock %s: %w", f.Name(), err)
	}
	return nil
}

// Umask sets the process's file mode creation mask and returns the old one.
// It is process-wide: a caller that narrows it for one file restores it
// right after.
func Umask(mask int) (old int) { return unix.Umask(mask) }
