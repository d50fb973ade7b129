package drivers

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/packet"
)

// Handing reservations to another nexus process (a takeover,
// docs/upgrade.md): a reservation is one kernel socket, so the new
// process takes a duplicate (ExportFD, AdoptReservation) and the old one
// lets its own go without a shutdown (Abandon), which would stop the
// shared socket listening.

// ExportFD returns a duplicate of the reservation's socket, which the
// caller owns.
func (res *Reservation) ExportFD() (int, error) {
	res.mu.Lock()
	defer res.mu.Unlock()
	if res.fd < 0 {
		return -1, fmt.Errorf("export reservation: closed")
	}
	fd, err := unix.FcntlInt(uintptr(res.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("export reservation: %w", err)
	}
	return fd, nil
}

// Abandon closes this process's descriptor of the reservation without
// giving the port back: another process holds it now.
func (res *Reservation) Abandon() error {
	res.mu.Lock()
	defer res.mu.Unlock()
	if res.fd < 0 {
		return nil
	}
	err := unix.Close(res.fd)
	res.fd = -1
	return err
}

// AdoptReservation wraps a reservation's socket that another process
// exported for key's listener flow. It takes ownership of fd (closed on
// error), after checking it is a socket of key's protocol.
func AdoptReservation(key packet.Key, fd int) (*Reservation, error) {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	want := unix.SOCK_DGRAM
	if key.Proto == packet.ProtoTCP {
		want = unix.SOCK_STREAM
	}
	if err != nil || typ != want {
		unix.Close(fd)
		return nil, fmt.Errorf("adopt reservation of %v: socket type %d (%v), want %d", key, typ, err, want)
	}
	return &Reservation{fd: fd, tcp: key.Proto == packet.ProtoTCP}, nil
}
