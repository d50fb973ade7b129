package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/internal/selfsigned"
	"github.com/skylane/skylane/metrics"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/drivers"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/nexus/control"
	"github.com/skylane/skylane/nexus/inproc"
	"github.com/skylane/skylane/packet"
)

const serveUsage = `usage: skylane serve --dev DEV --addr [IP]:PORT [flags]

Serves HTTP (or HTTPS with --tls) from a user-space TCP/IP stack on a nexus
on DEV, until SIGINT or SIGTERM. On an Ethernet interface (afxdp, afpacket)
the stack shares the interface's kernel addresses and owns only its port:
the kernel keeps every other flow. With --driver tun, DEV is a TUN device
created for the run; the kernel gets --tun-addr on it and routes --addr's IP
into it.

flags:
`

// serveConfig is what `skylane serve` was asked to do.
type serveConfig struct {
	dev, driver, mode string
	addr              string // [IP]:PORT as given
	metrics           string // --metrics: kernel-stack address for Prometheus, or ""
	socket            string // --socket: control socket path for apps in other processes, or ""
	host              netip.Addr
	port              uint16
	tls               bool
	certFile, keyFile string
	peerMAC           string
	tunAddr           string
	shutdown          time.Duration
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
	fs.StringVar(&c.peerMAC, "peer-mac", "", "MAC of the next hop (afxdp, afpacket); default: the only neighbour in the kernel's table on --dev")
	fs.StringVar(&c.tunAddr, "tun-addr", "", "the kernel's address on the TUN device, as a prefix (default: the other address of --addr's /31, or /127)")
	fs.StringVar(&c.metrics, "metrics", "", "also serve Prometheus metrics of the nexus on this kernel-stack address, e.g. 127.0.0.1:9090")
	fs.StringVar(&c.socket, "socket", "", "also serve apps in other processes (client.Connect) on a control socket at this path, mode 0600; removed on exit")
	fs.DurationVar(&c.shutdown, "shutdown-timeout", 5*time.Second, "how long requests in flight may take to finish on SIGINT/SIGTERM")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("serve: unexpected argument %q (flags only; see skylane serve -h)", fs.Arg(0))
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
	link  netif.Link
	nx    *nexus.Nexus
	kp    *drivers.KernelPorts
	st    *client.Stack
	addrs []netip.Addr
	dev   string
}

// serve runs the server until ctx is done, then closes everything: the
// HTTP server (requests in flight get cfg.shutdown to finish), the stack,
// the nexus and with it the link (the XDP or TC program is detached, a
// TUN device removed).
func serve(ctx context.Context, cfg serveConfig, out, log io.Writer) (err error) {
	spec := drivers.Spec{Driver: cfg.driver, Dev: cfg.dev, Mode: cfg.mode}
	if err := drivers.CheckPrivileges(spec); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	s := &served{}
	defer func() { err = errors.Join(err, s.close()) }()
	if err := s.open(cfg, spec, log); err != nil {
		return err
	}

	var requests atomic.Uint64
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(rw http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		fmt.Fprintf(rw, "hello from skylane: a user-space TCP/IP stack on %s (%s)\nyou are %s\n", s.dev, cfg.driver, r.RemoteAddr)
	})
	mux.HandleFunc("/stats", func(rw http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		st, err := s.nx.Stats()
		if err != nil {
			http.Error(rw, err.Error(), http.StatusServiceUnavailable)
			return
		}
		rw.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(rw)
		enc.SetIndent("", "  ")
		enc.Encode(struct {
			Switch flowswitch.Stats
			Link   netif.Stats
			Flows  int
		}{st.Switch, st.Link, st.Flows})
	})
	listen := netip.AddrPortFrom(cfg.host, cfg.port).String()
	if !cfg.host.IsValid() {
		listen = fmt.Sprintf(":%d", cfg.port)
	}
	ln, err := s.st.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("serve: listen on %s: %w", cfg.addr, err)
	}
	scheme := "http"
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if cfg.tls {
		scheme = "https"
		cert, fp, err := serveCert(cfg, s.addrs)
		if err != nil {
			ln.Close()
			return err
		}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
		ln = tls.NewListener(ln, srv.TLSConfig)
		if fp != "" {
			fmt.Fprintf(out, "self-signed certificate, SHA-256 %s\n", fp)
		}
	}
	for _, a := range s.addrs {
		if !cfg.host.IsValid() || a == cfg.host {
			fmt.Fprintf(out, "listening on %s://%s/\n", scheme, netip.AddrPortFrom(a, cfg.port))
		}
	}
	if cfg.socket != "" {
		stop, err := serveSocket(cfg.socket, s.nx, log)
		if err != nil {
			return err
		}
		defer stop() // before s.close closes the nexus
		fmt.Fprintf(out, "apps connect on %s\n", cfg.socket)
	}

	fmt.Fprintf(out, "user-space TCP/IP stack on %s (%s); SIGINT or SIGTERM stops it\n", s.dev, describeDriver(cfg))

	if cfg.metrics != "" {
		// On the kernel's stack, beside the user-space one, so an
		// operator's scraper reaches it like any local service. Listened
		// on here, in serve's own thread and so its network namespace.
		reg := prometheus.NewRegistry()
		if err := reg.Register(metrics.New(s.nx.Snapshot, metrics.Options{})); err != nil {
			return fmt.Errorf("serve: metrics: %w", err)
		}
		mln, err := net.Listen("tcp", cfg.metrics)
		if err != nil {
			return fmt.Errorf("serve: --metrics %s: %w (is the address local and the port free?)", cfg.metrics, err)
		}
		msrv := &http.Server{Handler: metrics.Handler(reg), ReadHeaderTimeout: 10 * time.Second}
		mdone := make(chan struct{})
		go func() { defer close(mdone); msrv.Serve(mln) }()
		defer func() { msrv.Close(); <-mdone }()
		fmt.Fprintf(out, "metrics on http://%s/metrics\n", mln.Addr())
	}

	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdown)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close() // requests still running past the timeout are cut
	}
	<-done
	if st, err := s.nx.Stats(); err == nil {
		fmt.Fprintf(log, "skylane serve: stopping after %d requests; switch: %d frames in, %d packets out, %d refused by the transmit checks\n",
			requests.Load(), st.Switch.Packets, st.Switch.TxPackets, sumDrops(st.Switch.TxDrops))
	}
	return nil
}

// serveSocket serves the nexus's control socket at path until stop, which
// ends every app session (their ports closed) and removes the socket file.
func serveSocket(path string, nx *nexus.Nexus, log io.Writer) (stop func(), err error) {
	cln, err := control.Listen(path)
	if err != nil {
		return nil, fmt.Errorf("serve: --socket: %w (a file left by a crashed run must be removed first)", err)
	}
	// Only the nexus's user may open ports until the operator says
	// otherwise (chown or chmod the socket for the apps' users).
	if err := os.Chmod(path, 0o600); err != nil {
		cln.Close()
		return nil, fmt.Errorf("serve: --socket: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := control.Serve(ctx, nx, cln); err != nil {
			fmt.Fprintf(log, "skylane serve: apps can no longer connect: %v\n", err)
		}
	}()
	return func() { cancel(); <-done }, nil
}

// open opens the driver, the nexus and the stack.
func (s *served) open(cfg serveConfig, spec drivers.Spec, log io.Writer) error {
	swo := flowswitch.Options{}
	if cfg.driver == drivers.TUN {
		kernel, err := tunKernelAddr(cfg)
		if err != nil {
			return err
		}
		spec.Addrs = []netip.Prefix{kernel}
		s.addrs = []netip.Addr{cfg.host}
	} else {
		ifc, err := net.InterfaceByName(cfg.dev)
		if err != nil {
			return fmt.Errorf("serve: interface %q: %w in this network namespace (%w): list them with `ip link`; for another namespace, run under `ip netns exec NS`",
				cfg.dev, drivers.ErrNoInterface, err)
		}
		if s.addrs, err = interfaceAddrs(ifc, cfg.host); err != nil {
			return err
		}
		if len(ifc.HardwareAddr) != 6 {
			return fmt.Errorf("serve: %s is not an Ethernet interface (%w for %s): use --driver tun for raw-IP devices", cfg.dev, drivers.ErrUnsupported, cfg.driver)
		}
		swo.SrcMAC = [6]byte(ifc.HardwareAddr)
		if swo.DstMAC, err = serveNextHop(cfg, ifc); err != nil {
			return err
		}
		if cfg.driver == drivers.AFXDP && isVeth(cfg.dev) {
			fmt.Fprintf(log, "note: %s is a veth: its peer must send complete checksums and no TSO super packets (ethtool -K PEER tx off), as a wire does; XDP sees frames as the peer wrote them\n", cfg.dev)
		}
	}
	// The kernel's sockets, before anything is attached: a taken port is
	// the most common mistake, and the cheapest to report.
	kp, err := drivers.NewKernelPorts(s.addrs)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	s.kp = kp
	if who, taken := kp.Holder(packet.ProtoTCP, cfg.port); taken {
		return fmt.Errorf("serve: port %d/tcp is held by a kernel socket (%s): %w; stop that server or choose another port in --addr",
			cfg.port, who, flow.ErrPortInUse)
	}
	if s.link, err = drivers.Open(spec); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	s.dev = s.link.Name()
	// The flow table refuses listeners on the kernel sockets' ports; the
	// nexus steers its flows on the device itself.
	swo.PortTaken = kp.Taken
	nx, err := nexus.New(nexus.Options{Link: s.link, Addrs: s.addrs, Switch: swo})
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	s.nx, s.link = nx, nil // the nexus owns the link now
	if s.st, err = client.New(inproc.Nexus(nx), client.Options{Name: "serve"}); err != nil {
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
	if s.nx != nil {
		errs = append(errs, s.nx.Close())
	}
	if s.link != nil {
		errs = append(errs, s.link.Close())
	}
	if s.kp != nil {
		errs = append(errs, s.kp.Close())
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

// serveNextHop is the destination MAC of every frame the nexus sends. The
// flowswitch does not resolve neighbours yet, so one static next hop it
// is: --peer-mac, or the only neighbour the kernel knows on the interface.
func serveNextHop(cfg serveConfig, ifc *net.Interface) ([6]byte, error) {
	if cfg.peerMAC != "" {
		m, err := net.ParseMAC(cfg.peerMAC)
		if err != nil || len(m) != 6 {
			return [6]byte{}, fmt.Errorf("serve: --peer-mac %q: not a 6-byte MAC (e.g. 02:00:00:00:00:02)", cfg.peerMAC)
		}
		return [6]byte(m), nil
	}
	ns, err := netlink.NeighList(ifc.Index, netlink.FAMILY_ALL)
	if err != nil {
		return [6]byte{}, fmt.Errorf("serve: neighbours of %s: %w; pass --peer-mac", ifc.Name, err)
	}
	macs := map[string]bool{}
	for _, n := range ns {
		if len(n.HardwareAddr) == 6 && n.State&(netlink.NUD_INCOMPLETE|netlink.NUD_FAILED|netlink.NUD_NOARP) == 0 {
			macs[n.HardwareAddr.String()] = true
		}
	}
	if len(macs) == 1 {
		for m := range macs {
			hw, _ := net.ParseMAC(m)
			return [6]byte(hw), nil
		}
	}
	return [6]byte{}, fmt.Errorf("serve: pass --peer-mac, the MAC of the peer or gateway on %s (see `ip neigh show dev %s`): the kernel knows %d neighbours there, and the nexus does not resolve neighbours yet",
		ifc.Name, ifc.Name, len(macs))
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

func sumDrops(d flowswitch.TxDrops) uint64 {
	return d.Length + d.MTU + d.Parse + d.IPv4Options + d.SrcAddr + d.SrcPort + d.Proto +
		d.NoFlow + d.NotOwner + d.FlowID + d.TornDown + d.ListenerData + d.SYNRate
}
