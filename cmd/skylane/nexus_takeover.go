package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"

	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/afxdp"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/nexus/control"
	"github.com/skylane/skylane/nexus/takeover"
)

// Hidden knobs of the takeover tests: a process that declares another
// state version (it must be refused), and one that dies at a step of the
// hand-over (the old nexus must serve on).
const (
	envStateVersion = "SKYLANE_TAKEOVER_STATE_VERSION"
	envDieAt        = "SKYLANE_TAKEOVER_DIE_AT"
)

// takeoverVersion is the state version this process speaks.
func takeoverVersion() int {
	if v, err := strconv.Atoi(os.Getenv(envStateVersion)); err == nil && v > 0 {
		return v
	}
	return takeover.StateVersion
}

// takeoverOptions are Take's options for a nexus with options no (the
// daemon's, as openNexus prepared them) and control servers made by
// newServer.
func takeoverOptions(no nexus.Options, newServer func(*nexus.Nexus) *control.Server, log *slog.Logger) takeover.Options {
	return takeover.Options{
		Nexus: func(netif.Link) nexus.Options {
			no.Logger = log
			return no
		},
		Server:  newServer,
		Version: takeoverVersion(),
		// Under systemd (Type=notify, NotifyAccess=all) this process
		// becomes the service's main process before the old one exits.
		Committing: func(int) { sdNotify(fmt.Sprintf("MAINPID=%d", os.Getpid())) },
		Aborted:    func(old int) { sdNotify(fmt.Sprintf("MAINPID=%d", old)) },
		DieAt:      os.Getenv(envDieAt),
		Log:        log,
	}
}

// sdNotify sends state to the service manager ($NOTIFY_SOCKET, as
// sd_notify(3) does); without one it does nothing. Best effort: a lost
// notification costs a service state, never the datapath.
func sdNotify(state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if path[0] == '@' {
		path = "\x00" + path[1:] // abstract namespace
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return
	}
	defer c.Close()
	c.Write([]byte(state))
}

// spawnTakeover starts this binary again, with this process's arguments
// and --takeover, to take this nexus over (SIGUSR2: systemctl reload).
// Its output goes where this process's goes; done gets its exit.
func spawnTakeover(done chan<- error) error {
	exe := os.Args[0]
	if p, err := exec.LookPath(exe); err == nil {
		exe = p
	}
	args := os.Args[1:]
	if !slices.Contains(args, "--takeover") && !slices.Contains(args, "-takeover") {
		args = append(slices.Clone(args), "--takeover")
	}
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", exe, err)
	}
	go func() { done <- cmd.Wait() }()
	return nil
}

// startDonor answers takeover requests on tln for the nexus o (package
// nexus/takeover). handed gets Serve's end once: ErrHandedOver after a
// commit, or why the socket failed. stop ends Serve (if it still runs)
// and waits for it.
func startDonor(o *ownedNexus, srv *control.Server, sock *control.Socket, cfg nexusConfig, log *slog.Logger, tln *net.UnixListener) (handed <-chan error, stop func()) {
	donor := &takeover.Donor{Nexus: o.nx, Server: srv, Socket: sock, Driver: cfg.link.driver, Log: log,
		Version: takeoverVersion()}
	if x, ok := o.dev.(afxdp.Exporter); ok {
		donor.Link = x
	}
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		out <- donor.Serve(ctx, tln)
	}()
	return out, func() { cancel(); <-done }
}
