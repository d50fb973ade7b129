package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif/drivers"
)

// TestServeFlags: every mistake in the flags is refused before anything is
// opened, with a message naming the flag.
func TestServeFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--dev", "x"}, "--addr is required"},
		{[]string{"--dev", "x", "--addr", "198.18.0.1"}, "want IP:PORT"},
		{[]string{"--dev", "x", "--addr", "198.18.0.1:0"}, "not 1..65535"},
		{[]string{"--dev", "x", "--addr", "198.18.0.1:99999"}, "not 1..65535"},
		{[]string{"--dev", "x", "--addr", "example.com:80"}, "IP literal"},
		{[]string{"--dev", "x", "--addr", "224.0.0.1:80"}, "unicast"},
		{[]string{"--addr", "198.18.0.1:80"}, "--dev is required"},
		{[]string{"--dev", "x", "--addr", ":80", "--driver", "memif"}, "no kernel"},
		{[]string{"--dev", "x", "--addr", ":80", "--cert", "c.pem"}, "both --cert and --key"},
		{[]string{"--dev", "x", "--addr", ":80", "--driver", "tun"}, "needs the stack's IP"},
		{[]string{"--dev", "x", "--addr", "198.18.1.2:80", "--driver", "tun", "--peer-mac", "02:00:00:00:00:01"}, "raw IP"},
		{[]string{"--dev", "x", "--addr", ":80", "--tun-addr", "198.18.1.1/24"}, "for --driver tun"},
		{[]string{"--dev", "x", "--addr", ":80", "extra"}, "unexpected argument"},
		{[]string{"--nope"}, "not defined"},
	} {
		_, err := parseServe(c.args, new(bytes.Buffer))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want an error containing %q", c.args, err, c.want)
		}
	}
	if _, err := parseServe([]string{"--dev", "x", "--addr", ":80", "--driver", "nope"}, new(bytes.Buffer)); err != nil {
		t.Errorf("parse leaves unknown drivers to drivers.Open: %v", err)
	}
}

// TestServeTunAddr: the kernel's side of a TUN device defaults to the
// other address of the /31 (/127) of the stack's address.
func TestServeTunAddr(t *testing.T) {
	for _, c := range []struct{ addr, tun, want string }{
		{"198.18.1.2:80", "", "198.18.1.3/31"},
		{"198.18.1.3:80", "", "198.18.1.2/31"},
		{"[2001:2:1::2]:80", "", "2001:2:1::3/127"},
		{"198.18.1.2:80", "198.18.1.1/24", "198.18.1.1/24"},
	} {
		cfg, err := parseServe([]string{"--driver", "tun", "--addr", c.addr, "--tun-addr", c.tun}, new(bytes.Buffer))
		if err != nil {
			t.Fatal(err)
		}
		p, err := tunKernelAddr(cfg)
		if err != nil || p.String() != c.want {
			t.Errorf("%s: %v, %v; want %s", c.addr, p, err, c.want)
		}
	}
	for _, tun := range []string{"198.18.2.1/24", "198.18.1.2/24", "nope"} {
		cfg, err := parseServe([]string{"--driver", "tun", "--addr", "198.18.1.2:80", "--tun-addr", tun}, new(bytes.Buffer))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tunKernelAddr(cfg); err == nil {
			t.Errorf("--tun-addr %s accepted for 198.18.1.2", tun)
		}
	}
}

// TestServeNotRoot: without the capabilities a driver needs, serve says so
// before it looks at anything else. Capabilities are per thread in Linux:
// the test drops them on a thread of its own, which then dies with its
// goroutine (LockOSThread without Unlock), so this runs as root too.
func TestServeNotRoot(t *testing.T) {
	for _, d := range []string{drivers.AFXDP, drivers.AFPacket, drivers.TUN} {
		errc := make(chan error, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread goes with the goroutine
			hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
			var data [2]unix.CapUserData
			if err := unix.Capget(&hdr, &data[0]); err != nil {
				errc <- err
				return
			}
			for i := range data {
				data[i].Effective = 0
			}
			if err := unix.Capset(&hdr, &data[0]); err != nil {
				errc <- err
				return
			}
			cfg, err := parseServe([]string{"--driver", d, "--dev", "nonexistent0", "--addr", "198.18.1.2:8080"}, new(bytes.Buffer))
			if err != nil {
				errc <- err
				return
			}
			errc <- serve(context.Background(), cfg, new(bytes.Buffer), new(bytes.Buffer))
		}()
		err := <-errc
		if !errors.Is(err, drivers.ErrNotRoot) || !strings.Contains(err.Error(), "run as root") {
			t.Errorf("%s without capabilities: %v, want drivers.ErrNotRoot saying to run as root", d, err)
		}
	}
}

// TestServe runs serve in this process, in the local namespace of a veth
// pair (or a namespace of its own for TUN), fetches its page with the
// kernel's curl from the peer, over HTTP and HTTPS, stops it and checks the
// interface is left as it was.
func TestServe(t *testing.T) {
	for _, c := range []struct {
		driver  string
		tls     bool
		peerMAC bool // the --peer-mac override: a static next hop, no resolution
	}{{drivers.AFXDP, false, false}, {drivers.AFXDP, true, false}, {drivers.AFPacket, false, false}, {drivers.AFPacket, false, true}, {drivers.TUN, true, false}} {
		name := fmt.Sprintf("%s/tls=%v", c.driver, c.tls)
		if c.peerMAC {
			name += "/peer-mac"
		}
		t.Run(name, func(t *testing.T) {
			nettest.RequirePriv(t)
			nettest.RequireCommand(t, "curl")
			local, peer, args, target := serveWorld(t, c.driver)
			if c.tls {
				args = append(args, "--tls")
			}
			if c.peerMAC {
				args = append(args, "--peer-mac", peerMACOf(t, peer))
			}
			if c.driver != drivers.TUN {
				args = append(args, "--metrics", "127.0.0.1:9464")
			}
			srv := startServe(t, local, args)
			if !strings.Contains(srv.out.String(), "listening on") {
				t.Fatalf("no listening line: %q", srv.out.String())
			}
			scheme := "http"
			if c.tls {
				scheme = "https"
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			// -k: the certificate is self-signed; its fingerprint is printed.
			out, err := peer.Command(ctx, "curl", "-sS", "-k", "--max-time", "10", scheme+"://"+target+"/").CombinedOutput()
			if err != nil || !strings.HasPrefix(string(out), "hello from skylane") {
				m, _ := local.Command(ctx, "curl", "-sS", "--max-time", "10", "http://127.0.0.1:9464/metrics").CombinedOutput()
				for _, l := range strings.Split(string(m), "\n") {
					if strings.Contains(l, "neigh") || strings.Contains(l, "l2_") || strings.Contains(l, "drops_total") && !strings.HasSuffix(l, " 0") {
						t.Log(l)
					}
				}
				t.Fatalf("curl %s://%s/: %v: %s\nserve said: %s", scheme, target, err, out, srv.out.String())
			}
			// The nexus's counters are not served on the user-space port.
			out, err = peer.Command(ctx, "curl", "-sS", "-k", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
				scheme+"://"+target+"/stats").CombinedOutput()
			if err != nil || string(out) != "404" {
				t.Errorf("GET /stats on the user-space port: %v: %s, want 404", err, out)
			}
			if c.driver != drivers.TUN {
				checkKernelPassed(t, ctx, local, peer, strings.TrimSuffix(target, ":8080"))
				// Resolution runs unless --peer-mac overrides it.
				m, err := local.Command(ctx, "curl", "-sS", "--max-time", "10", "http://127.0.0.1:9464/metrics").CombinedOutput()
				if resolved := strings.Contains(string(m), "\nskylane_neigh_routes 1\n"); err != nil || resolved == c.peerMAC {
					t.Errorf("metrics (%v): the peer's route cached %v, want %v", err, resolved, !c.peerMAC)
				}
			}
			if err := srv.stop(); err != nil {
				t.Fatalf("serve: %v", err)
			}
			if c.driver != drivers.TUN {
				checkNoXDP(t, local, args[1])
			}
		})
	}
}

// checkKernelPassed connects to the kernel on the shared interface (addr):
// the kernel answers, and --metrics (Prometheus text from the kernel's stack
// in serve's namespace) counts those frames as passed to the kernel, never
// as no_flow drops: on AF_PACKET the switch reads them and leaves them to
// the kernel's copy, on AF_XDP the program passes them.
func checkKernelPassed(t *testing.T, ctx context.Context, local, peer *nettest.NS, addr string) {
	t.Helper()
	// Port 8081 is no flow's: the kernel has it, refuses each connection
	// (a RST: it did receive the SYN).
	const tries = 3
	for range tries {
		out, _ := peer.Command(ctx, "curl", "-sS", "--max-time", "5", "http://"+addr+":8081/").CombinedOutput()
		if !strings.Contains(string(out), "(7)") { // curl's "couldn't connect": refused
			t.Fatalf("curl to the kernel's port %s:8081: %s, want the connection refused", addr, out)
		}
	}
	out, err := local.Command(ctx, "curl", "-sS", "--max-time", "10", "http://127.0.0.1:9464/metrics").CombinedOutput()
	if err != nil {
		t.Fatalf("metrics: %v: %.400s", err, out)
	}
	text := string(out)
	for _, c := range []struct {
		series string
		ok     func(float64) bool
		want   string
	}{
		{"skylane_kernel_passed_packets_total", func(v float64) bool { return v >= tries }, fmt.Sprintf(">= %d", tries)},
		{`skylane_drops_total{dir="rx",place="switch",reason="no_flow"}`, func(v float64) bool { return v == 0 }, "0"},
		{"skylane_netif_rx_packets_total", func(v float64) bool { return v > 0 }, "> 0"},
		{"skylane_netif_rx_drops_total", func(v float64) bool { return v >= 0 }, "present"},
	} {
		v, ok := promValue(text, c.series)
		if !ok || !c.ok(v) {
			t.Errorf("metrics: %s = %v (present %v), want %s", c.series, v, ok, c.want)
		}
	}
}

// promValue returns the value of series (a name with its labels, as the
// text format writes them) in Prometheus text.
func promValue(text, series string) (float64, bool) {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

// TestServeErrors: a missing interface, a port a kernel socket holds and an
// address that is not the interface's each stop serve with an error that
// says so, and leave nothing attached.
func TestServeErrors(t *testing.T) {
	nettest.RequirePriv(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	base := []string{"--driver", drivers.AFXDP}
	var kln net.Listener
	if err := v.Local.Do(func() (err error) { kln, err = net.Listen("tcp", ":8081"); return err }); err != nil {
		t.Fatal(err)
	}
	defer kln.Close()
	for _, c := range []struct {
		args []string
		is   error
		want string
	}{
		{[]string{"--dev", "nonexistent0", "--addr", ":8080"}, drivers.ErrNoInterface, "ip link"},
		{[]string{"--dev", v.LocalName, "--addr", "198.18.0.1:8081"}, flow.ErrPortInUse, "held by a kernel socket (tcp6 [::]:8081 LISTEN)"},
		{[]string{"--dev", v.LocalName, "--addr", "198.18.0.9:8080"}, nil, "not an address of " + v.LocalName},
		{[]string{"--dev", v.LocalName, "--addr", ":8080", "--mode", "turbo"}, drivers.ErrUnsupported, "have: generic, native"},
		{[]string{"--dev", v.LocalName, "--addr", ":8080", "--driver", "dpdk"}, drivers.ErrUnsupported, "have: memif, tun, afpacket, afxdp"},
	} {
		cfg, err := parseServe(append(append([]string(nil), base...), c.args...), new(bytes.Buffer))
		if err == nil {
			err = v.Local.Do(func() error { return serve(context.Background(), cfg, new(bytes.Buffer), new(bytes.Buffer)) })
		}
		if err == nil || (c.is != nil && !errors.Is(err, c.is)) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v; want %v containing %q", c.args, err, c.is, c.want)
		} else {
			t.Logf("%q: %v", c.args, err)
		}
	}
	checkNoXDP(t, v.Local, v.LocalName)
}

// serveWorld makes the hosts for a serve of driver: the namespace serve
// runs in, the one curl runs in, serve's arguments and curl's target.
func serveWorld(t *testing.T, driver string) (local, peer *nettest.NS, args []string, target string) {
	t.Helper()
	if driver == drivers.TUN {
		ns := nettest.NewNS(t)
		return ns, ns, []string{"--dev", "sktserve0", "--driver", driver, "--addr", "198.18.1.2:8080", "--tun-addr", "198.18.1.1/24"}, "198.18.1.2:8080"
	}
	v := nettest.NewVeth(t, nettest.VethOptions{})
	if driver == drivers.AFXDP {
		// A veth hands XDP partially checksummed TSO frames; a wire
		// does not (see the note serve prints). AF_PACKET completes
		// them from their virtio headers.
		nettest.RequireCommand(t, "ethtool")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if out, err := v.Peer.Command(ctx, "ethtool", "-K", v.PeerName, "tx", "off").CombinedOutput(); err != nil {
			t.Fatalf("ethtool: %v: %s", err, out)
		}
	}
	return v.Local, v.Peer, []string{"--dev", v.LocalName, "--driver", driver, "--addr", ":8080"},
		v.LocalAddr.Addr().String() + ":8080"
}

// running is serve running in a goroutine of this test.
type running struct {
	out    *syncBuffer
	cancel context.CancelFunc
	done   chan error
}

// startServe runs serve with args inside ns (nil: where the test runs)
// and returns once it listens.
func startServe(t *testing.T, ns *nettest.NS, args []string) *running {
	t.Helper()
	cfg, err := parseServe(args, new(bytes.Buffer))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{out: newSyncBuffer(), cancel: cancel, done: make(chan error, 1)}
	go func() {
		// The namespace is needed while serve opens things; its thread
		// stays in it until serve returns, which does no harm.
		run := func() error { return serve(ctx, cfg, r.out, r.out) }
		if ns == nil {
			r.done <- run()
			return
		}
		r.done <- ns.Do(run)
	}()
	t.Cleanup(func() { r.stop() })
	select {
	case <-r.out.wait("user-space TCP/IP stack on"):
	case err := <-r.done:
		r.done <- err
		t.Fatalf("serve ended before listening: %v\n%s", err, r.out.String())
	case <-time.After(20 * time.Second):
		t.Fatalf("serve did not listen in 20s:\n%s", r.out.String())
	}
	return r
}

// stop stops serve as SIGINT does and returns its result; idempotent.
func (r *running) stop() error {
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- err
		return err
	case <-time.After(30 * time.Second):
		return errors.New("serve did not stop in 30s")
	}
}

// checkNoXDP fails t if dev in ns still has an XDP program.
func checkNoXDP(t *testing.T, ns *nettest.NS, dev string) {
	t.Helper()
	nl, err := ns.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	l, err := nl.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	if x := l.Attrs().Xdp; x != nil && x.Attached {
		t.Errorf("%s: XDP program %d left attached", dev, x.ProgId)
	}
}

// syncBuffer is a bytes.Buffer written by serve and read by the test.
type syncBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	waiters map[string]chan struct{}
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{waiters: map[string]chan struct{}{}} }

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.b.Write(p)
	for k, ch := range s.waiters {
		if strings.Contains(s.b.String(), k) {
			close(ch)
			delete(s.waiters, k)
		}
	}
	return n, err
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// wait returns a channel closed once the output contains text.
func (s *syncBuffer) wait(text string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := make(chan struct{})
	if strings.Contains(s.b.String(), text) {
		close(ch)
	} else {
		s.waiters[text] = ch
	}
	return ch
}

// checkSocket opens a Stack on serve's control socket at path: it must
// have the address serve listens on (target, IP:PORT) and be refused that
// port, and get another.
func checkSocket(t *testing.T, path, target string) {
	t.Helper()
	nx, err := client.Connect(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := client.New(nx, client.Options{Name: "app"})
	if err != nil {
		t.Fatalf("stack over %s: %v", path, err)
	}
	defer st.Close()
	ap, err := netip.ParseAddrPort(target)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(st.Addrs(), ap.Addr()) {
		t.Errorf("app's addresses %v lack %v", st.Addrs(), ap.Addr())
	}
	if _, err := st.Listen("tcp", target); !errors.Is(err, flow.ErrPortInUse) {
		t.Errorf("listen on serve's %s: %v, want flow.ErrPortInUse", target, err)
	}
	ln, err := st.Listen("tcp", netip.AddrPortFrom(ap.Addr(), ap.Port()+1).String())
	if err != nil {
		t.Fatalf("app listen: %v", err)
	}
	t.Logf("app over %s: addresses %v, listening on %v", path, st.Addrs(), ln.Addr())
	ln.Close()
}

// peerMACOf returns the MAC of the only veth in ns (serveWorld's peer).
func peerMACOf(t *testing.T, ns *nettest.NS) string {
	t.Helper()
	var mac string
	err := ns.Do(func() error {
		ifs, err := net.Interfaces()
		for _, i := range ifs {
			if len(i.HardwareAddr) == 6 {
				mac = i.HardwareAddr.String()
			}
		}
		return err
	})
	if err != nil || mac == "" {
		t.Fatalf("peer MAC: %v", err)
	}
	return mac
}
