package takeover

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/afxdp"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/nexus/control"
)

// Options configure Take.
type Options struct {
	// Nexus returns the options of the new nexus on the adopted link
	// (Link is set by Take, and Frozen).
	Nexus func(link netif.Link) nexus.Options
	// Server returns the control server of the new nexus (its policy,
	// its log); nil: control.NewServer with defaults.
	Server func(*nexus.Nexus) *control.Server
	// Version is the state version spoken; 0 is StateVersion.
	Version int
	// Timeout bounds each step; 0 is DefaultTimeout.
	Timeout time.Duration
	// Committing, if set, is called just before the commit is asked for,
	// with the old process's pid; Aborted, if Committing was called and
	// the commit could not be asked for after all. A service manager
	// is told the main process changes there (sd_notify MAINPID), before
	// the old process can exit.
	Committing, Aborted func(oldPID int)
	// DieAt, for tests, exits the process (status 3) at that step
	// (StepHello, ...), as a new process that crashes there.
	DieAt string
	Log   *slog.Logger
}

// Taken is what a committed takeover hands the new process: a nexus
// serving on the adopted device, its control server with the adopted
// sessions (started) and the control socket, for the caller to Serve.
type Taken struct {
	Link   netif.Link // owned by Nexus
	Nexus  *nexus.Nexus
	Server *control.Server
	Socket *control.Socket
	State  State // as received
	// Lost counts sessions that could not be adopted (closed: their
	// apps see the nexus gone and may re-attach) and ports no session
	// claimed (closed).
	Lost int
	// Frozen is how long the old process was frozen, as seen from here:
	// from the freeze request to the commit.
	Frozen time.Duration
}

// Take takes over the nexus serving the control socket at path: the
// steps of the package doc, from this side. On any error before the
// commit the old nexus serves on and this process holds nothing.
func Take(path string, o Options) (*Taken, error) {
	version := o.Version
	if version == 0 {
		version = StateVersion
	}
	timeout := o.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	die := func(step string) {
		if o.DieAt == step {
			o.Log.Error("takeover: dying on purpose (test)", "step", step)
			os.Exit(3)
		}
	}
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: SocketPath(path), Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("takeover: no nexus to take over at %s: %w (is one running with this --socket?)", SocketPath(path), err)
	}
	defer c.Close()
	if err := send(c, message{Type: "hello", Version: version, PID: os.Getpid()}); err != nil {
		return nil, err
	}
	m, err := recv(c, time.Now().Add(timeout))
	if err != nil {
		return nil, err
	}
	if m.Type == "refuse" {
		if m.Version != version {
			return nil, fmt.Errorf("%w: %s", ErrVersion, m.Error)
		}
		return nil, fmt.Errorf("takeover refused: %s", m.Error)
	}
	if m.Type != "ready" {
		return nil, fmt.Errorf("takeover: %q instead of ready", m.Type)
	}
	oldPID := m.PID
	die(StepHello)
	start := time.Now()
	if err := send(c, message{Type: "freeze"}); err != nil {
		return nil, err
	}
	die(StepFreeze)
	m, err = recv(c, time.Now().Add(timeout))
	if err != nil {
		return nil, err
	}
	if m.Type == "refuse" {
		return nil, fmt.Errorf("takeover refused: %s", m.Error)
	}
	if m.Type != "state" {
		return nil, fmt.Errorf("takeover: %q instead of state", m.Type)
	}
	st, fds, err := recvState(c, m, time.Now().Add(timeout))
	if err != nil {
		return nil, err
	}
	if st.Version != version {
		closeFDs(fds)
		return nil, fmt.Errorf("%w: state of version %d, this process speaks %d", ErrVersion, st.Version, version)
	}
	die(StepState)
	t, conns, err := adopt(path, st, fds, o)
	if err != nil {
		send(c, message{Type: "abort", Error: err.Error()})
		return nil, fmt.Errorf("%w: %w", ErrAborted, err)
	}
	die(StepAdopted)
	if o.Committing != nil {
		o.Committing(oldPID)
	}
	if err := send(c, message{Type: "commit"}); err != nil {
		t.abandon(conns)
		if o.Aborted != nil {
			o.Aborted(oldPID)
		}
		return nil, fmt.Errorf("%w: %w", ErrAborted, err)
	}
	if m, err = recv(c, time.Now().Add(timeout)); err != nil || m.Type != "committed" {
		// The old process read the commit and died before it answered,
		// or never read it: either way it let go of everything (it
		// commits only once its answer went out, and thaws only on a
		// failed answer, i.e. when this process is gone).
		o.Log.Warn("takeover: no answer to the commit; carrying on", "err", err, "got", m.Type)
	}
	t.Frozen = time.Since(start)
	// Committed: run the datapath, serve the sessions.
	if err := t.Nexus.Thaw(); err != nil {
		return nil, fmt.Errorf("takeover: thaw: %w", err)
	}
	ports := t.ports
	lost, err := t.Server.Adopt(st.Server, conns, ports)
	t.Lost += lost
	if err != nil {
		o.Log.Warn("takeover: sessions", "err", err)
	}
	for name, p := range ports { // no session claimed them: their apps went during the freeze
		p.Close()
		delete(ports, name)
		t.Lost++
	}
	return &t.Taken, nil
}

// taking is a takeover in progress on this side.
type taking struct {
	Taken
	ports map[string]*nexus.RemotePort
}

// adopt adopts the link, a frozen nexus on it and the ports, and the
// control socket; it returns the sessions' connections unstarted. On
// error everything adopted is abandoned (never closed) and every
// descriptor closed.
func adopt(path string, st State, fds []int, o Options) (_ *taking, conns []int, err error) {
	if st.Driver != "afxdp" {
		closeFDs(fds)
		return nil, nil, fmt.Errorf("%w: driver %q", ErrNotSupported, st.Driver)
	}
	t := &taking{Taken: Taken{State: st}, ports: make(map[string]*nexus.RemotePort)}
	next := 0
	take := func(n int) []int {
		f := fds[next : next+n]
		next += n
		return f
	}
	defer func() {
		if err != nil {
			closeFDs(fds[next:])
			t.abandon(nil)
		}
	}()
	link, err := afxdp.Adopt(st.Link, take(afxdp.HandoverFDs))
	if err != nil {
		return nil, nil, err
	}
	t.Link = link
	var no nexus.Options
	if o.Nexus != nil {
		no = o.Nexus(link)
	}
	no.Link, no.Frozen = link, true
	if t.Nexus, err = nexus.New(no); err != nil {
		return nil, nil, err
	}
	if err := t.Nexus.Restore(st.Nexus); err != nil {
		return nil, nil, err
	}
	for _, ph := range st.Nexus.Ports {
		rp, err := t.Nexus.AdoptPort(ph, take(ph.FDs()))
		if err != nil {
			return nil, nil, err
		}
		t.ports[ph.Name] = rp
	}
	conns = take(len(st.Server.Sessions))
	sock := take(2)
	if t.Socket, err = control.AdoptSocket(path, sock[0], sock[1]); err != nil {
		closeFDs(conns)
		return nil, nil, err
	}
	if o.Server != nil {
		t.Server = o.Server(t.Nexus)
	} else {
		t.Server = control.NewServer(t.Nexus, control.ServerOptions{})
	}
	return t, conns, nil
}

// abandon lets go of everything adopted, touching nothing the old
// process still serves.
func (t *taking) abandon(conns []int) {
	closeFDs(conns)
	if t.Socket != nil {
		t.Socket.Abandon()
	}
	switch {
	case t.Nexus != nil:
		if err := t.Nexus.Abandon(); err != nil { // closes the link too
			t.Nexus.Close()
		}
	case t.Link != nil:
		t.Link.Close()
	}
}
