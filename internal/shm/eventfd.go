package shm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// EventFD is a non-blocking eventfd. Signal never blocks; Wait parks the
// calling goroutine in Go's poller, not an OS thread.
type EventFD struct {
	f      *os.File
	fd     int
	closed atomic.Bool
}

// NewEventFD creates an eventfd.
func NewEventFD() (*EventFD, error) {
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return EventFDFrom(fd)
}

// EventFDFrom wraps an eventfd received from another process; it takes
// ownership of fd.
func EventFDFrom(fd int) (*EventFD, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("eventfd %d: set non-blocking: %w", fd, err)
	}
	return &EventFD{f: os.NewFile(uintptr(fd), "eventfd"), fd: fd}, nil
}

// FD returns the descriptor, still owned by e.
func (e *EventFD) FD() int { return e.fd }

// Signal adds one to the counter, waking a waiter. A full counter (2^64-2)
// means the waiter is already due to wake, so EAGAIN is not an error.
func (e *EventFD) Signal() error {
	var one = [8]byte{1}
	_, err := unix.Write(e.fd, one[:])
	if err != nil && !errors.Is(err, unix.EAGAIN) {
		return fmt.Errorf("signal eventfd: %w", err)
	}
	return nil
}

// ErrTimeout is returned by Wait when its timeout passed with no signal.
var ErrTimeout = errors.New("shm: wait timed out")

// Wait blocks until the counter is non-zero or timeout passes (0: no
// limit), resets the counter and returns its value. It returns ErrClosed
// once Close was called and ErrTimeout when the time ran out.
func (e *EventFD) Wait(timeout time.Duration) (uint64, error) {
	var b [8]byte
	var dl time.Time
	if timeout > 0 {
		dl = time.Now().Add(timeout)
	}
	if err := e.f.SetReadDeadline(dl); err != nil {
		if e.closed.Load() {
			return 0, ErrClosed
		}
		return 0, fmt.Errorf("eventfd deadline: %w", err)
	}
	if _, err := io.ReadFull(e.f, b[:]); err != nil {
		switch {
		case e.closed.Load() || errors.Is(err, os.ErrClosed):
			return 0, ErrClosed
		case errors.Is(err, os.ErrDeadlineExceeded):
			return 0, ErrTimeout
		}
		return 0, fmt.Errorf("wait on eventfd: %w", err)
	}
	return binary.NativeEndian.Uint64(b[:]), nil
}

// Close closes the eventfd and wakes any Wait with ErrClosed.
func (e *EventFD) Close() error {
	e.closed.Store(true)
	return e.f.Close()
}

// Drain resets the counter without blocking, and reports whether it was
// non-zero.
func (e *EventFD) Drain() bool {
	var b [8]byte
	n, err := unix.Read(e.fd, b[:])
	return err == nil && n == 8
}
