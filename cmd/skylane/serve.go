package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/internal/selfsigned"
	"github.com/skylane/skylane/netif/drivers"
	"github.com/skylane/skylane/nexus/inproc"
	"github.com/skylane/skylane/packet"
)

const serveUsage = `usage: skylane serve --dev DEV --addr [IP]:PORT [flags]
       skylane serve --nexus SOCKET --addr [IP]:PORT [--reconnect] [--tls ...]

Serves HTTP (or HTTPS with --tls) from a user-space TCP/IP stack, until
SIGINT or SIGTERM.

With --dev, on a nexus of its own on DEV (one process, as root). On an
Ethernet interface (afxdp, afpacket) the stack shares the interface's kernel
addresses and owns only its port: the kernel keeps every other flow, and
its routing and neighbour tables give each client's next hop (a gateway
for clients off the link), followed live. With
--driver tun, DEV is a TUN device created for the run; the kernel gets
--tun-addr on it and routes --addr's IP into it.

With --nexus, as an app of the nexus serving its control socket at SOCKET
(skylane nexus), as whatever user runs it: the nexus's policy decides what
it may listen on. When that nexus goes away, serve exits non-zero naming
it, or with --reconnect waits for a nexus to serve SOCKET again and serves
on.

flags:
`

// peerMACUsage is --peer-mac's help, serve's and nexus's.
const peerMACUsage = "override: send every frame to this MAC (afxdp, afpacket; a point-to-point wire); default: each destination's next hop, resolved through the kernel's routing and neighbour tables"

// serveConfig is what `skylane serve` was asked to do.
type serveConfig struct {
	dev, driver, mode string
	addr              string // [IP]:PORT as given
	metrics           string // --metrics: kernel-stack address for Prometheus, or ""
	nexus             string // --nexus: a running nexus's control socket, or "" for a nexus of serve's own
	reconnect         bool   // --reconnect: outlive the nexus of --nexus
	host              netip.Addr
	port              uint16
	tls               bool
	certFile, keyFile string
	peerMAC           string
	tunAddr           string
	shutdown          time.Duration
	busyPoll          time.Duration // --busy-poll: the app's and its own nexus's spin budget
}

// runServe is `skylane serve`: it serves until SIGINT or SIGTERM.
func runServe(args []string) error {
	cfg, err := parseServe(args, os.Stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return serve(ctx, cfg, os.Stdout, os.Stderr)
}

func parseServe(args []string, usageOut io.Writer) (serveConfig, error) {
	var c serveConfig
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(usageOut)
	fs.Usage = func() {
		fmt.Fprint(usageOut, serveUsage)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.dev, "dev", "", "interface (afxdp, afpacket), or the TUN device to create (tun)")
	fs.StringVar(&c.driver, "driver", drivers.AFXDP, "driver: "+strings.Join(drivers.Names()[1:], ", "))
	fs.StringVar(&c.mode, "mode", "", "driver mode: afxdp generic (default) or native; afpacket steer (default) or tap")
	fs.StringVar(&c.addr, "addr", "", "IP:PORT to serve on; an empty IP means every address of --dev (afxdp, afpacket)")
	fs.BoolVar(&c.tls, "tls", false, "serve HTTPS, with a self-signed certificate unless --cert and --key are given")
	fs.StringVar(&c.certFile, "cert", "", "PEM certificate for HTTPS (implies --tls)")
	fs.StringVar(&c.keyFile, "key", "", "PEM private key for HTTPS (implies --tls)")
	fs.StringVar(&c.peerMAC, "peer-mac", "", peerMACUsage)
	fs.StringVar(&c.tunAddr, "tun-addr", "", "the kernel's address on the TUN device, as a prefix (default: the other address of --addr's /31, or /127)")
	fs.StringVar(&c.metrics, "metrics", "", "also serve Prometheus metrics of the nexus on this kernel-stack address, e.g. 127.0.0.1:9090")
	fs.StringVar(&c.nexus, "nexus", "", "serve as an app of the running nexus whose control socket is at this path, instead of on a nexus of serve's own")
	fs.BoolVar(&c.reconnect, "reconnect", false, "with --nexus: when the nexus goes away, wait for one to serve the socket again and serve on, rather than exit")
	fs.DurationVar(&c.shutdown, "shutdown-timeout", 5*time.Second, "how long requests in flight may take to finish on SIGINT/SIGTERM")
	fs.DurationVar(&c.busyPoll, "busy-poll", 0, "the stack (and a nexus of serve's own) spin this long for work before sleeping, e.g. 50us: lower latency for the CPU it burns (0: sleep at once)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("serve: unexpected argument %q (flags only; see skylane serve -h)", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if c.nexus != "" {
		// The nexus owns the device; an app names none of it.
		for _, f := range []string{"dev", "driver", "mode", "peer-mac", "tun-addr", "metrics"} {
			if set[f] {
				return c, fmt.Errorf("serve: --%s is the nexus's, not an app's: drop it with --nexus (skylane nexus takes it)", f)
			}
		}
		c.driver = ""
	} else if c.reconnect {
		return c, errors.New("serve: --reconnect is for --nexus: a nexus of serve's own does not go away alone")
	}
	if c.driver == drivers.Memif {
		return c, fmt.Errorf("serve: driver memif is an in-memory wire with no kernel on the other end: use afxdp, afpacket or tun")
	}
	if c.addr == "" {
		return c, errors.New("serve: --addr is required, e.g. --addr 198.18.0.1:8080 (or :8080 for every address of --dev)")
	}
	host, port, err := net.SplitHostPort(c.addr)
	if err != nil {
		return c, fmt.Errorf("serve: --addr %q: %w (want IP:PORT)", c.addr, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return c, fmt.Errorf("serve: --addr %q: port %q is not 1..65535", c.addr, port)
	}
	c.port = uint16(p)
	if host != "" {
		if c.host, err = netip.ParseAddr(host); err != nil {
			return c, fmt.Errorf("serve: --addr %q: %w (an IP literal: the user-space stack has no resolver)", c.addr, err)
		}
		c.host = c.host.Unmap()
		if c.host.Zone() != "" || !c.host.IsGlobalUnicast() {
			return c, fmt.Errorf("serve: --addr %q: want a unicast address without a zone", c.addr)
		}
	}
	if (c.certFile == "") != (c.keyFile == "") {
		return c, errors.New("serve: give both --cert and --key, or neither (--tls alone makes a self-signed certificate)")
	}
	if c.certFile != "" {
		c.tls = true
	}
	if c.nexus != "" {
		return c, nil
	}
	if c.driver == drivers.TUN {
		if !c.host.IsValid() {
			return c, errors.New("serve: --driver tun needs the stack's IP in --addr (e.g. 198.18.1.2:8080): the kernel routes it into the device")
		}
		if c.peerMAC != "" {
			return c, errors.New("serve: --peer-mac is for Ethernet drivers; a TUN device carries raw IP")
		}
	} else if c.tunAddr != "" {
		return c, errors.New("serve: --tun-addr is for --driver tun")
	}
	if c.dev == "" && c.driver != drivers.TUN {
		return c, fmt.Errorf("serve: --dev is required with --driver %s (the interface to serve on)", c.driver)
	}
	return c, nil
}

// served is a running server: the parts serve closes, in order.
type served struct {
	*ownedNexus
	st *client.Stack
}

// serve runs the server until ctx is done, then closes everything: the
// HTTP server (requests in flight get cfg.shutdown to finish), the stack,
// the nexus and with it the link (the XDP or TC program is detached, a
// TUN device removed). With cfg.nexus it is an app of that nexus instead
// (serveOnNexus).
func serve(ctx context.Context, cfg serveConfig, out, log io.Writer) (err error) {
	if cfg.nexus != "" {
		return serveOnNexus(ctx, cfg, out, log)
	}
	spec := drivers.Spec{Driver: cfg.driver, Dev: cfg.dev, Mode: cfg.mode}
	if err := drivers.CheckPrivileges(spec); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	s := &served{}
	defer func() { err = errors.Join(err, s.close()) }()
	if err := s.open(cfg, spec, log); err != nil {
		return err
	}
	if cfg.metrics != "" {
		// On the kernel's stack, beside the user-space one, so an
		// operator's scraper reaches it like any local service. Listened
		// on here, in serve's own thread and so its network namespace.
		at, stop, err := serveMetrics(cfg.metrics, s.nx, nil)
		if err != nil {
			return fmt.Errorf("serve: %w", err)
		}
		defer stop()
		fmt.Fprintf(out, "metrics on http://%s/metrics\n", at)
	}
	return serveHTTP(ctx, cfg, httpOn{
		st: s.st, addrs: s.addrs,
		what: fmt.Sprintf("%s (%s)", s.name, cfg.driver), where: fmt.Sprintf("%s (%s)", s.name, describeDriver(cfg)),
		bye: func(requests uint64) {
			if st, err := s.nx.Stats(); err == nil {
				fmt.Fprintf(log, "skylane serve: stopping after %d requests; switch: %d frames in, %d packets out, %d refused by the transmit checks\n",
					requests, st.Switch.Packets, st.Switch.TxPackets, st.Switch.TxDrops.Total())
			}
		},
	}, out)
}

// open opens the driver, the nexus and the stack.
func (s *served) open(cfg serveConfig, spec drivers.Spec, log io.Writer) (err error) {
	lc := linkConfig{dev: cfg.dev, driver: cfg.driver, mode: cfg.mode, host: cfg.host, peerMAC: cfg.peerMAC, tunAddr: cfg.tunAddr, busyPoll: cfg.busyPoll,
		// A taken port is the most common mistake, and the cheapest to
		// report: before anything is attached.
		checkPorts: func(kp *drivers.KernelPorts) error {
			if who, taken := kp.Holder(packet.ProtoTCP, cfg.port); taken {
				return fmt.Errorf("port %d/tcp is held by a kernel socket (%s): %w; stop that server or choose another port in --addr",
					cfg.port, who, flow.ErrPortInUse)
			}
			return nil
		}}
	if s.ownedNexus, err = openNexus(lc, log); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	if s.st, err = client.New(inproc.Nexus(s.nx), client.Options{Name: "serve", BusyPoll: cfg.busyPoll}); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// close closes what open made, in reverse order.
func (s *served) close() error {
	var errs []error
	if s.st != nil {
		errs = append(errs, s.st.Close())
	}
	if s.ownedNexus != nil {
		errs = append(errs, s.ownedNexus.close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("serve: close: %w", err)
	}
	return nil
}

// interfaceAddrs returns the addresses the stack uses on ifc: host if
// valid (it must be one of ifc's: the kernel answers ARP and NDP for the
// interface, so the stack shares its addresses), else every global one.
func interfaceAddrs(ifc *net.Interface, host netip.Addr) ([]netip.Addr, error) {
	as, err := ifc.Addrs()
	if err != nil {
		return nil, fmt.Errorf("serve: addresses of %s: %w", ifc.Name, err)
	}
	var all []netip.Addr
	for _, a := range as {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok || ip.IsLinkLocalUnicast() || ip.IsLoopback() {
			continue
		}
		ip = ip.Unmap()
		if host.IsValid() && ip == host {
			return []netip.Addr{ip}, nil
		}
		all = append(all, ip)
	}
	if host.IsValid() {
		return nil, fmt.Errorf("serve: %v is not an address of %s (it has %v): the kernel answers ARP and NDP on the interface, so the user-space stack uses one of its addresses; add it (ip addr add %v/24 dev %s) or serve on one of those",
			host, ifc.Name, all, host, ifc.Name)
	}
	if len(all) == 0 {
		return nil, fmt.Errorf("serve: %s has no global address: give it one (ip addr add ... dev %s)", ifc.Name, ifc.Name)
	}
	return all, nil
}

// parsePeerMAC parses --peer-mac, the static next hop that overrides
// resolution (a point-to-point wire).
func parsePeerMAC(peerMAC string) ([6]byte, error) {
	m, err := net.ParseMAC(peerMAC)
	if err != nil || len(m) != 6 {
		return [6]byte{}, fmt.Errorf("--peer-mac %q: not a 6-byte MAC (e.g. 02:00:00:00:00:02)", peerMAC)
	}
	return [6]byte(m), nil
}

// tunKernelAddr is the kernel's address on the TUN device: --tun-addr, or
// the other address of the /31 (IPv4) or /127 (IPv6) holding --addr's IP.
func tunKernelAddr(cfg serveConfig) (netip.Prefix, error) {
	if cfg.tunAddr != "" {
		p, err := netip.ParsePrefix(cfg.tunAddr)
		if err != nil {
			return p, fmt.Errorf("serve: --tun-addr %q: %w (want a prefix, e.g. 198.18.1.1/24)", cfg.tunAddr, err)
		}
		if p.Addr() == cfg.host || !p.Contains(cfg.host) {
			return p, fmt.Errorf("serve: --tun-addr %v must be another address of a prefix holding %v, so the kernel routes %v into the device", p, cfg.host, cfg.host)
		}
		return p, nil
	}
	b := cfg.host.AsSlice()
	b[len(b)-1] ^= 1
	other, _ := netip.AddrFromSlice(b)
	return netip.PrefixFrom(other, cfg.host.BitLen()-1), nil
}

// serveCert loads --cert/--key, or makes a self-signed certificate for
// the served addresses and returns its fingerprint.
func serveCert(cfg serveConfig, addrs []netip.Addr) (tls.Certificate, string, error) {
	if cfg.certFile != "" {
		c, err := tls.LoadX509KeyPair(cfg.certFile, cfg.keyFile)
		if err != nil {
			return c, "", fmt.Errorf("serve: --cert/--key: %w", err)
		}
		return c, "", nil
	}
	// Valid for a month: long enough for a demo server, short enough that a
	// forgotten one does not stay trusted.
	c, _, err := selfsigned.New("skylane serve", 30*24*time.Hour, addrs...)
	if err != nil {
		return c, "", fmt.Errorf("serve: %w", err)
	}
	sum := sha256.Sum256(c.Certificate[0])
	return c, hex.EncodeToString(sum[:]), nil
}

func describeDriver(cfg serveConfig) string {
	switch cfg.driver {
	case drivers.AFXDP:
		m := cfg.mode
		if m == "" {
			m = drivers.ModeGeneric
		}
		return "AF_XDP, " + m + " XDP; other flows pass to the kernel"
	case drivers.AFPacket:
		if cfg.mode == drivers.ModeTap {
			return "AF_PACKET tap"
		}
		return "AF_PACKET with TC steering; other flows stay with the kernel"
	case drivers.TUN:
		return "TUN"
	}
	return cfg.driver
}

// isVeth reports whether dev is a veth (best effort: false on error).
func isVeth(dev string) bool {
	l, err := netlink.LinkByName(dev)
	return err == nil && l.Type() == "veth"
}
