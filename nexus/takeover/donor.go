package takeover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/skylane/skylane/internal/syscalls"
	"github.com/skylane/skylane/netif/afxdp"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/nexus/control"
)

// DefaultTimeout bounds a hand-over from the freeze to the commit: past
// it the old nexus thaws and serves on.
const DefaultTimeout = 10 * time.Second

// ErrHandedOver is what Donor.Serve returns after a commit: the new
// process serves; the caller exits without removing anything.
var ErrHandedOver = errors.New("takeover: handed over to a new nexus")

// Donor is the running nexus's side: it answers takeover requests on
// its own socket (Listen) until one commits.
type Donor struct {
	Nexus  *nexus.Nexus
	Server *control.Server
	Socket *control.Socket
	// Link is the device, if it can be handed over (AF_XDP); nil refuses
	// every takeover with ErrNotSupported, naming Driver.
	Link   afxdp.Exporter
	Driver string
	// Version is the state version spoken; 0 is StateVersion (tests
	// declare another).
	Version int
	// Timeout bounds a hand-over from freeze to commit; 0 is
	// DefaultTimeout.
	Timeout time.Duration
	Log     *slog.Logger
}

// SocketPath is the takeover socket of the control socket at path.
func SocketPath(path string) string { return path + ".takeover" }

// Listen makes the takeover socket beside the control socket at path,
// mode 0600 (only the nexus's user, root, may take it over), replacing a
// stale one (the control socket's lock says no live nexus owns it).
func Listen(path string) (*net.UnixListener, error) {
	p := SocketPath(path)
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("takeover: remove stale %s: %w", p, err)
	}
	old := syscalls.Umask(0o177)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: p, Net: "unixpacket"})
	syscalls.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("takeover: listen on %s: %w", p, err)
	}
	return ln, nil
}

// Serve answers takeover requests on ln, one at a time, until ctx is done
// (nil) or one commits (ErrHandedOver: the nexus, server and socket were
// abandoned, and the caller must exit without closing them). A failed
// takeover leaves everything serving as before. It closes ln.
func (d *Donor) Serve(ctx context.Context, ln *net.UnixListener) error {
	if d.Log == nil {
		d.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer ln.Close()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("takeover: accept: %w", err)
		}
		// A new process that commits makes its own takeover socket at
		// the same path, maybe before this one is closed: closing it
		// must not remove that.
		ln.SetUnlinkOnClose(false)
		committed, err := d.handle(ctx, c)
		c.Close()
		if committed {
			return ErrHandedOver
		}
		ln.SetUnlinkOnClose(true)
		if err != nil {
			d.Log.Warn("takeover failed; this nexus serves on", "err", err)
		}
	}
}

// handle runs one takeover request.
func (d *Donor) handle(ctx context.Context, c *net.UnixConn) (committed bool, err error) {
	version := d.Version
	if version == 0 {
		version = StateVersion
	}
	timeout := d.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	// Step 1, prepare: nothing is touched until the versions match.
	hello, err := recv(c, time.Now().Add(timeout))
	if err != nil {
		return false, err
	}
	if hello.Type != "hello" {
		return false, fmt.Errorf("takeover: %q before hello", hello.Type)
	}
	d.Log.Info("takeover requested", "pid", hello.PID, "version", hello.Version)
	refuse := func(err error) (bool, error) {
		send(c, message{Type: "refuse", Error: err.Error(), Version: version})
		return false, err
	}
	switch {
	case hello.Version != version:
		return refuse(fmt.Errorf("%w: this nexus (pid %d) hands over state version %d, the new process speaks %d: run a binary of the same state version, or restart the nexus (apps re-attach)",
			ErrVersion, os.Getpid(), version, hello.Version))
	case d.Link == nil:
		return refuse(fmt.Errorf("%w: driver %s cannot be handed over (AF_XDP only): restart the nexus instead (apps re-attach)", ErrNotSupported, d.Driver))
	}
	if err := send(c, message{Type: "ready", Version: version, PID: os.Getpid()}); err != nil {
		return false, err
	}
	m, err := recv(c, time.Now().Add(timeout))
	if err != nil {
		return false, err
	}
	if m.Type != "freeze" {
		return false, fmt.Errorf("takeover: %q instead of freeze", m.Type)
	}

	// Step 2, freeze: sessions first, so no request is in the middle of
	// the nexus; then the datapath; then the device.
	deadline := time.Now().Add(timeout)
	start := time.Now()
	st := State{Version: version, Driver: "afxdp"}
	var fds []int
	sh, conns, lnFD, err := d.Server.Freeze(d.Socket.UnixListener)
	if err != nil {
		return refuse(err)
	}
	thawServer := func() {
		closeFDs(conns)
		closeFDs([]int{lnFD})
		d.Server.Thaw(d.Socket.UnixListener)
	}
	nh, pfds, err := d.Nexus.Freeze()
	if err != nil {
		thawServer()
		return refuse(fmt.Errorf("%w: %w", ErrNotSupported, err))
	}
	thaw := func() {
		for _, f := range pfds {
			closeFDs(f)
		}
		closeFDs(fds)
		d.Nexus.Thaw()
		thawServer()
	}
	lh, lfds, err := d.Link.Export()
	if err != nil {
		thaw()
		return refuse(err)
	}
	st.Link, st.Nexus, st.Server = lh, nh, sh
	fds = append(fds, lfds...)
	for _, f := range pfds {
		fds = append(fds, f...)
	}
	pfds = nil
	fds = append(fds, conns...)
	conns = nil
	lnDup, lockFD, err := d.Socket.ExportFDs()
	if err != nil {
		thaw()
		return refuse(err)
	}
	closeFDs([]int{lnDup}) // the server's Freeze gave one already
	fds = append(fds, lnFD, lockFD)
	lnFD = -1

	// Step 3, transfer.
	c.SetWriteDeadline(deadline)
	if err := sendState(c, &st, fds); err != nil {
		thaw()
		return false, fmt.Errorf("%w: %w", ErrAborted, err)
	}
	closeFDs(fds) // the new process has its own now
	fds = nil
	d.Log.Info("takeover: state sent", "ports", len(st.Nexus.Ports), "sessions", len(st.Server.Sessions),
		"frozen_ms", time.Since(start).Milliseconds())

	// Step 4, commit: only an answer the new process can read commits.
	m, err = recv(c, deadline)
	if err != nil || m.Type != "commit" {
		thaw()
		if err == nil {
			err = fmt.Errorf("the new process says %s: %s", m.Type, m.Error)
		}
		return false, fmt.Errorf("%w: %w", ErrAborted, err)
	}
	if err := send(c, message{Type: "committed"}); err != nil {
		thaw()
		return false, fmt.Errorf("%w: %w", ErrAborted, err)
	}
	// Point of no return: the new process owns everything.
	d.Server.Abandon(d.Socket.UnixListener)
	d.Socket.Abandon()
	if err := d.Nexus.Abandon(); err != nil {
		d.Log.Warn("takeover: abandon", "err", err)
	}
	d.Log.Info("takeover committed; handing over to the new nexus", "pid", hello.PID, "frozen_ms", time.Since(start).Milliseconds())
	return true, nil
}
