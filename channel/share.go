package channel

import (
	"encoding/json"
	"fmt"
	"net"

	"github.com/skylane/skylane/internal/shm"
)

// maxDescriptorLen bounds the descriptor message read from the socket.
const maxDescriptorLen = 4096

// Send passes the channel to the app at the other end of conn: its
// descriptor as JSON, its file descriptors as SCM_RIGHTS.
func (c *Channel) Send(conn *net.UnixConn) error {
	d, fds, err := c.Share()
	if err != nil {
		return err
	}
	return SendShared(conn, d, fds)
}

// SendShared sends a channel Share returned (its descriptor and fds) over
// conn, for Receive at the other end, and closes fds on every path. It
// lets a nexus take the Share where the channel lives (its worker) and
// write to the socket elsewhere, so an app that stops reading stalls no
// datapath.
func SendShared(conn *net.UnixConn, d Descriptor, fds []int) error {
	defer func() {
		for _, fd := range fds {
			shm.CloseFD(fd)
		}
	}()
	msg, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("send channel %q: %w", d.Name, err)
	}
	if err := shm.SendFDs(conn, msg, fds); err != nil {
		return fmt.Errorf("send channel %q: %w", d.Name, err)
	}
	return nil
}

// Receive attaches the channel a nexus sent over conn with Channel.Send.
func Receive(conn *net.UnixConn) (*App, error) {
	msg, fds, err := shm.RecvFDs(conn, maxDescriptorLen)
	if err != nil {
		return nil, fmt.Errorf("receive channel: %w", err)
	}
	var d Descriptor
	if err := json.Unmarshal(msg, &d); err != nil {
		for _, fd := range fds {
			shm.CloseFD(fd)
		}
		return nil, fmt.Errorf("receive channel: bad descriptor: %w", err)
	}
	return Attach(d, fds)
}
