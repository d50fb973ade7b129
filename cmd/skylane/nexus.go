package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/skylane/skylane/metrics"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/drivers"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/nexus/control"
	"github.com/skylane/skylane/nexus/policy"
	"github.com/skylane/skylane/nexus/takeover"
)

const nexusUsage = `usage: skylane nexus --dev IF --driver afxdp|afpacket|tun|memif --socket PATH [flags]

Runs a nexus: owns the interface and serves apps (client.Connect, skylane
serve --nexus) on a control socket until SIGINT or SIGTERM, then removes
everything it made (the XDP or TC program, the TUN device, the socket and
its lock file). Root only.

On afxdp and afpacket the nexus shares the interface, and its addresses,
with the kernel: each destination's next hop comes from the kernel's routing
and neighbour tables, followed live (--peer-mac overrides it with one MAC).

Apps: the socket is mode 0660, group --socket-group; each app session is
checked against --policy by its peer credentials (with no policy, only root
may attach). SIGHUP reloads the policy: sessions and their flows stay; each
session is matched again, and its later requests are checked against the
new rule (flows it already holds are not torn down; restart the app, or the
nexus, to drop them).

Upgrades under live traffic (AF_XDP): run the new binary with the same
flags and --takeover, or send the running nexus SIGUSR2 (systemctl
reload), which starts the binary at its own path so. The new process
receives the device, every app's channel and session and the socket; the
old one exits 0; apps see a pause, no reconnect. If the takeover fails the
old nexus serves on (docs/upgrade.md).

If the interface is deleted or set down (or the driver fails), the nexus
logs it, tells its apps why, and exits 1 (systemd's Restart=on-failure starts it again; it starts
once the interface is back). A socket left by a crashed nexus is replaced
at once; one a live nexus serves is refused.

flags:
`

// nexusConfig is what `skylane nexus` was asked to do.
type nexusConfig struct {
	link      linkConfig
	socket    string
	group     string // --socket-group: name or number, "" for the nexus's
	policy    string // --policy file, "" for root only
	metrics   string // kernel-stack address for Prometheus, or ""
	logFormat string
	takeover  bool // take the device, ports and sessions over from the nexus serving socket
}

func runNexus(args []string) error {
	cfg, err := parseNexus(args, os.Stderr)
	if err != nil {
		return err
	}
	log := newLogger(os.Stderr, cfg.logFormat)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	defer signal.Stop(usr2)
	return runNexusDaemon(ctx, cfg, signals{hup: hup, upgrade: usr2}, log)
}

func newLogger(w io.Writer, format string) *slog.Logger {
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, nil))
	}
	return slog.New(slog.NewTextHandler(w, nil))
}

func parseNexus(args []string, usageOut io.Writer) (nexusConfig, error) {
	var (
		c    nexusConfig
		addr string
	)
	fs := flag.NewFlagSet("nexus", flag.ContinueOnError)
	fs.SetOutput(usageOut)
	fs.Usage = func() {
		fmt.Fprint(usageOut, nexusUsage)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.link.dev, "dev", "", "interface (afxdp, afpacket), the TUN device to create (tun), or the wire's name (memif)")
	fs.StringVar(&c.link.driver, "driver", drivers.AFXDP, "driver: "+strings.Join(drivers.Names(), ", "))
	fs.StringVar(&c.link.mode, "mode", "", "driver mode: afxdp generic (default) or native; afpacket steer (default) or tap")
	fs.StringVar(&addr, "addr", "", "the apps' address: one of --dev's (afxdp, afpacket; default all of them), or the stack's (tun, memif: required)")
	fs.StringVar(&c.link.peerMAC, "peer-mac", "", peerMACUsage)
	fs.StringVar(&c.link.tunAddr, "tun-addr", "", "the kernel's address on the TUN device, as a prefix (default: the other address of --addr's /31, or /127)")
	fs.StringVar(&c.socket, "socket", "", "the control socket's path, e.g. /run/skylane/nexus.sock (required)")
	fs.StringVar(&c.group, "socket-group", "", "group (name or gid) whose members may connect to the socket; default the nexus's")
	fs.StringVar(&c.policy, "policy", "", "policy file (TOML [[allow]] rules); default: only root may attach")
	fs.IntVar(&c.link.maxFlows, "max-flows", 0, "flows the nexus holds at most, all apps together (default 2M, about 600 MiB); past it connections are reset, counted and logged")
	fs.IntVar(&c.link.maxPortFlows, "max-port-flows", 0, "flows one app's port holds at most (default 256K); the policy's max_flows limits an app further")
	fs.StringVar(&c.metrics, "metrics", "", "serve Prometheus metrics on this kernel-stack address, e.g. 127.0.0.1:9090")
	fs.StringVar(&c.logFormat, "log-format", "text", "log lines as text (key=value) or json")
	fs.BoolVar(&c.takeover, "takeover", false, "take over from the nexus serving --socket (an upgrade under live traffic, AF_XDP only; docs/upgrade.md): same flags as that nexus")
	fs.DurationVar(&c.link.busyPoll, "busy-poll", 0, "spin this long for work before sleeping, e.g. 50us: lower latency for the CPU it burns (0: sleep at once)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if c.link.busyPoll < 0 || c.link.busyPoll > time.Second {
		return c, fmt.Errorf("nexus: --busy-poll %v outside 0..1s", c.link.busyPoll)
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("nexus: unexpected argument %q (flags only; see skylane nexus -h)", fs.Arg(0))
	}
	if c.socket == "" {
		return c, errors.New("nexus: --socket is required, e.g. --socket /run/skylane/nexus.sock")
	}
	if c.logFormat != "text" && c.logFormat != "json" {
		return c, fmt.Errorf("nexus: --log-format %q: want text or json", c.logFormat)
	}
	if c.link.maxFlows < 0 || c.link.maxPortFlows < 0 {
		return c, fmt.Errorf("nexus: --max-flows %d, --max-port-flows %d: want a positive number of flows (0: the default)", c.link.maxFlows, c.link.maxPortFlows)
	}
	if addr != "" {
		a, err := netip.ParseAddr(addr)
		if err != nil || a.Zone() != "" || !a.Unmap().IsGlobalUnicast() {
			return c, fmt.Errorf("nexus: --addr %q: want a unicast IP address without a zone or port", addr)
		}
		c.link.host = a.Unmap()
	}
	switch c.link.driver {
	case drivers.TUN, drivers.Memif:
		if !c.link.host.IsValid() {
			return c, fmt.Errorf("nexus: --driver %s needs --addr, the apps' address on the device", c.link.driver)
		}
	default:
		if c.link.dev == "" {
			return c, fmt.Errorf("nexus: --dev is required with --driver %s (the interface to own)", c.link.driver)
		}
	}
	if c.link.tunAddr != "" && c.link.driver != drivers.TUN {
		return c, errors.New("nexus: --tun-addr is for --driver tun")
	}
	return c, nil
}

// lookupGroup resolves --socket-group: a name or a number; "" is -1 (the
// process's group).
func lookupGroup(g string) (int, error) {
	if g == "" {
		return -1, nil
	}
	if n, err := strconv.Atoi(g); err == nil && n >= 0 {
		return n, nil
	}
	gr, err := user.LookupGroup(g)
	if err != nil {
		return 0, fmt.Errorf("nexus: --socket-group %q: %w (create it with groupadd, or give a gid)", g, err)
	}
	return strconv.Atoi(gr.Gid)
}

// loadPolicy loads --policy, or RootOnly without one.
func loadPolicy(path string) (*policy.Policy, error) {
	if path == "" {
		return policy.RootOnly(), nil
	}
	p, err := policy.Load(path)
	if err != nil {
		return nil, fmt.Errorf("nexus: --policy: %w", err)
	}
	return p, nil
}

// errLinkGone: the nexus's interface was deleted or set down.
var errLinkGone = errors.New("interface gone")

// runNexusDaemon serves until ctx is done or the interface goes, and
// removes what it made on every path.
// signals are what the daemon does on signals other than SIGINT/SIGTERM.
type signals struct {
	hup     <-chan os.Signal // reload the policy
	upgrade <-chan os.Signal // SIGUSR2: start this binary again to take over (systemctl reload)
}

func runNexusDaemon(ctx context.Context, cfg nexusConfig, sig signals, log *slog.Logger) (err error) {
	pol, err := loadPolicy(cfg.policy)
	if err != nil {
		return err
	}
	gid, err := lookupGroup(cfg.group)
	if err != nil {
		return err
	}
	notes := &logWriter{log}
	// Per-app rates need the switch's regulation layer; a policy that
	// names none runs without it (adding the first rate takes a restart).
	cfg.link.regulation = hasRates(pol)
	var (
		sock *control.Socket
		srv  *control.Server
		o    *ownedNexus
	)
	newServer := func(nx *nexus.Nexus) *control.Server {
		return control.NewServer(nx, control.ServerOptions{Policy: pol, Log: log})
	}
	cfg.link.log = log
	if cfg.takeover {
		// The socket, device, ports and sessions come from the nexus
		// serving the socket; it serves on if anything fails here.
		var tk *takeover.Taken
		cfg.link.takeover = func(no nexus.Options) (*nexus.Nexus, netif.Link, error) {
			var err error
			tk, err = takeover.Take(cfg.socket, takeoverOptions(no, newServer, log))
			if err != nil {
				return nil, nil, err
			}
			return tk.Nexus, tk.Link, nil
		}
		if o, err = openNexus(cfg.link, notes); err != nil {
			return fmt.Errorf("nexus: %w", err)
		}
		sock, srv = tk.Socket, tk.Server
		log.Info("took over", "ports", len(tk.State.Nexus.Ports), "sessions", len(tk.State.Server.Sessions),
			"lost", tk.Lost, "frozen_ms", tk.Frozen.Milliseconds())
	} else {
		// The socket first: a second nexus on the same path must be
		// refused before it touches the interface the first one owns.
		if sock, err = control.ListenSocket(cfg.socket, gid); err != nil {
			return fmt.Errorf("nexus: %w", err)
		}
		if o, err = openNexus(cfg.link, notes); err != nil {
			sock.Close()
			return fmt.Errorf("nexus: %w", err)
		}
		srv = newServer(o.nx)
	}
	defer sock.Close()
	defer func() {
		if cerr := o.close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("nexus: close: %w", cerr))
		}
	}()
	gone, stopWatch, err := watchLink(o.index, o.name, log)
	if err != nil {
		return fmt.Errorf("nexus: %w", err)
	}
	defer stopWatch()

	sctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, sock.UnixListener) }()
	defer func() {
		cancel()
		if serr := <-served; serr != nil {
			err = errors.Join(err, fmt.Errorf("nexus: %w", serr))
		}
	}()

	if cfg.metrics != "" {
		at, stop, err := serveMetrics(cfg.metrics, o.nx, srv)
		// After a takeover the old nexus may still hold the address for
		// the moments it takes to exit; the apps are served meanwhile,
		// so failing now would cost them everything over a metrics port.
		for wait := 10 * time.Millisecond; err != nil && cfg.takeover && wait < 5*time.Second; wait *= 2 {
			time.Sleep(wait)
			at, stop, err = serveMetrics(cfg.metrics, o.nx, srv)
		}
		switch {
		case err != nil && cfg.takeover:
			log.Error("metrics not served after the takeover (the apps are)", "err", err)
		case err != nil:
			return fmt.Errorf("nexus: %w", err)
		default:
			defer stop()
			log.Info("metrics", "url", "http://"+at.String()+"/metrics")
		}
	}
	// Takeover requests, for the next nexus binary (docs/upgrade.md).
	// Without the socket this nexus serves on, but an upgrade needs a
	// restart.
	var handed <-chan error // Serve's end: a commit, or a failed socket; nil without one
	if tln, err := takeover.Listen(cfg.socket); err != nil {
		log.Error("no takeover socket: an upgrade of this nexus needs a restart", "err", err)
	} else {
		var stopDonor func()
		handed, stopDonor = startDonor(o, srv, sock, cfg, log, tln)
		defer stopDonor()
	}
	spawned := make(chan error, 1)
	handedOver := false
	defer func() {
		if !handedOver { // else the new process is the service now
			sdNotify("STOPPING=1")
		}
	}()
	log.Info("nexus started", "dev", o.name, "driver", cfg.link.driver, "addrs", o.addrs, "socket", cfg.socket,
		"policy", policyName(cfg.policy), "rules", len(pol.Rules), "pid", os.Getpid())
	sdNotify(fmt.Sprintf("READY=1\nMAINPID=%d", os.Getpid()))

	for {
		select {
		case <-ctx.Done():
			log.Info("nexus stopping", "reason", "signal")
			srv.Shutdown("nexus stopped by its operator")
			return nil
		case why := <-gone:
			reason := fmt.Sprintf("interface %s %s", o.name, why)
			log.Error("nexus stopping", "reason", reason)
			srv.Shutdown("nexus on " + o.name + " stopping: " + reason)
			return fmt.Errorf("nexus: %s: %w", reason, errLinkGone)
		case <-o.nx.LinkFailed():
			reason := o.nx.LinkErr().Error()
			log.Error("nexus stopping: its link failed", "reason", reason)
			srv.Shutdown("nexus stopping: " + reason)
			return fmt.Errorf("nexus: %s: %w", reason, errLinkGone)
		case terr := <-handed:
			handed = nil
			if errors.Is(terr, takeover.ErrHandedOver) {
				log.Info("nexus handed over; exiting")
				handedOver = true
				return nil
			}
			log.Error("takeover socket failed; upgrades need a restart now", "err", terr)
		case <-sig.upgrade:
			log.Info("upgrade requested: starting a new nexus to take over", "binary", os.Args[0])
			if err := spawnTakeover(spawned); err != nil {
				log.Error("upgrade: the new nexus did not start; this one serves on", "err", err)
			}
		case err := <-spawned:
			// The new process exited while this one serves: its
			// takeover failed (it said why).
			log.Error("upgrade: the new nexus exited without taking over; this one serves on", "err", err)
		case <-sig.hup:
			p, err := loadPolicy(cfg.policy)
			if err != nil {
				log.Error("policy reload failed; keeping the old policy", "err", err)
				continue
			}
			n := srv.SetPolicy(p)
			log.Info("policy reloaded", "policy", policyName(cfg.policy), "rules", len(p.Rules), "sessions", n)
			if !cfg.link.regulation && hasRates(p) {
				log.Warn("the policy now has rates, but this nexus started without rate regulation: apps under a rate are refused until it is restarted")
			}
		}
	}
}

func hasRates(p *policy.Policy) bool {
	return slices.ContainsFunc(p.Rules, func(r *policy.Rule) bool { return r.Rate > 0 })
}

func policyName(p string) string {
	if p == "" {
		return "none (root only)"
	}
	return p
}

// logWriter turns driver notes into log lines.
type logWriter struct{ log *slog.Logger }

func (w *logWriter) Write(b []byte) (int, error) {
	w.log.Warn(strings.TrimSpace(string(b)))
	return len(b), nil
}

// serveMetrics serves the nexus's Prometheus metrics on the kernel's stack
// at addr, in the calling thread's network namespace, until stop; at is
// the address it listens on. ctl, if not nil, names the ports' apps.
func serveMetrics(addr string, nx *nexus.Nexus, ctl *control.Server) (at net.Addr, stop func(), err error) {
	reg := prometheus.NewRegistry()
	var o metrics.Options
	if ctl != nil {
		// Port series carry their app's name and uid (port_info), from
		// the control server's sessions.
		o.Apps = func() map[string]metrics.App {
			m := map[string]metrics.App{}
			for ch, a := range ctl.PortApps() {
				m[ch] = metrics.App{Name: a.Name, UID: a.UID}
			}
			return m
		}
	}
	if err := reg.Register(metrics.New(nx.Snapshot, o)); err != nil {
		return nil, nil, fmt.Errorf("metrics: %w", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("--metrics %s: %w (is the address local and the port free?)", addr, err)
	}
	srv := &http.Server{Handler: metrics.Handler(reg), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	return ln.Addr(), func() { srv.Close(); <-done }, nil
}
