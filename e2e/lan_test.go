package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/neigh"
	"github.com/skylane/skylane/netif/drivers"
)

// The LAN of the next-hop tests, all of it in namespaces the test makes:
// a bridge with the server, three clients and a router, which leads to a
// second subnet with a far host. IPv6 uses the ULA prefixes
// fd00:198:18::/64 (the LAN) and fd00:198:19::/64 (the far subnet); the
// server's IPv6 route to the far subnet is via the router's link-local
// address, as routers advertise themselves.
var (
	lanServer4  = netip.MustParseAddr("198.18.0.1")
	lanServer6  = netip.MustParseAddr("fd00:198:18::1")
	lanRouter4  = netip.MustParseAddr("198.18.0.254")
	lanRouterLL = netip.MustParseAddr("fe80::fe")
	lanFar4     = netip.MustParseAddr("198.19.0.2")
	lanFar6     = netip.MustParseAddr("fd00:198:19::2")
)

// lanClient4 and lanClient6 are client i's addresses (i from 0).
func lanClient4(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 0, byte(11 + i)}) }
func lanClient6(i int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("fd00:198:18::%x", 0x11+i))
}

// macChangeBound is how soon a client whose MAC changed is answered again,
// stated and checked: its kernel flushed its neighbours, so it asks for the
// server before its SYN; the server's kernel learns the new MAC from that
// question and the nexus follows its table. One lost SYN-ACK (an event
// not followed yet) costs the client's first SYN retransmission, at 1 s.
const macChangeBound = 3 * time.Second

type lan struct {
	server, bridge, router, far *nettest.NS
	clients                     []*nettest.NS
}

// nsRun runs a command in ns, bounded by opTimeout.
func nsRun(t *testing.T, ns *nettest.NS, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if out, err := ns.Command(ctx, name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s in %s: %v: %s", name, strings.Join(args, " "), ns.Name, err, out)
	}
}

// ipIn runs `ip args` (split on spaces) in ns.
func ipIn(t *testing.T, ns *nettest.NS, args string) {
	t.Helper()
	nsRun(t, ns, "ip", strings.Fields(args)...)
}

// sysctl writes /proc/sys/<key> (dots as slashes) inside ns: /proc/sys/net
// is the opening thread's namespace's.
func sysctl(t *testing.T, ns *nettest.NS, key, val string) {
	t.Helper()
	p := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	if err := ns.Do(func() error { return os.WriteFile(p, []byte(val), 0o644) }); err != nil {
		t.Fatalf("sysctl %s=%s in %s: %v", key, val, ns.Name, err)
	}
}

// newLAN builds the LAN. Every sender's interface sends whole checksums
// and no TSO (ethtool tx off), as a wire does: XDP sees frames as written.
func newLAN(t *testing.T) *lan {
	t.Helper()
	nettest.RequirePriv(t)
	nettest.RequireCommand(t, "ethtool")
	l := &lan{server: nettest.NewNS(t), bridge: nettest.NewNS(t), router: nettest.NewNS(t), far: nettest.NewNS(t)}
	for range 3 {
		l.clients = append(l.clients, nettest.NewNS(t))
	}
	all := append([]*nettest.NS{l.server, l.bridge, l.router, l.far}, l.clients...)
	for _, ns := range all {
		// Addresses usable at once: no duplicate address detection.
		sysctl(t, ns, "net.ipv6.conf.all.accept_dad", "0")
		sysctl(t, ns, "net.ipv6.conf.default.accept_dad", "0")
	}
	ipIn(t, l.bridge, "link add br0 type bridge")
	ipIn(t, l.bridge, "link set br0 up")
	attach := func(ns *nettest.NS, port string) {
		ipIn(t, l.bridge, "link add "+port+" type veth peer name lan0 netns "+ns.Name)
		ipIn(t, l.bridge, "link set "+port+" master br0 up")
		ipIn(t, ns, "link set lan0 up")
		nsRun(t, ns, "ethtool", "-K", "lan0", "tx", "off")
	}
	attach(l.server, "ps")
	attach(l.router, "pr")
	for i, c := range l.clients {
		attach(c, "pc"+strconv.Itoa(i))
		ipIn(t, c, "addr add "+lanClient4(i).String()+"/24 dev lan0")
		ipIn(t, c, "addr add "+lanClient6(i).String()+"/64 dev lan0")
	}
	ipIn(t, l.server, "addr add 198.18.0.1/24 dev lan0")
	ipIn(t, l.server, "addr add fd00:198:18::1/64 dev lan0")
	ipIn(t, l.server, "route add default via "+lanRouter4.String())
	ipIn(t, l.server, "-6 route add default via "+lanRouterLL.String()+" dev lan0")

	ipIn(t, l.router, "addr add 198.18.0.254/24 dev lan0")
	ipIn(t, l.router, "addr add fd00:198:18::fe/64 dev lan0")
	ipIn(t, l.router, "addr add fe80::fe/64 dev lan0")
	ipIn(t, l.router, "link add up0 type veth peer name far0 netns "+l.far.Name)
	ipIn(t, l.router, "addr add 198.19.0.1/24 dev up0")
	ipIn(t, l.router, "addr add fd00:198:19::1/64 dev up0")
	ipIn(t, l.router, "link set up0 up")
	sysctl(t, l.router, "net.ipv4.ip_forward", "1")
	sysctl(t, l.router, "net.ipv6.conf.all.forwarding", "1")

	ipIn(t, l.far, "addr add 198.19.0.2/24 dev far0")
	ipIn(t, l.far, "addr add fd00:198:19::2/64 dev far0")
	ipIn(t, l.far, "link set far0 up")
	nsRun(t, l.far, "ethtool", "-K", "far0", "tx", "off")
	ipIn(t, l.far, "route add default via 198.19.0.1")
	ipIn(t, l.far, "-6 route add default via fd00:198:19::1")
	return l
}

// hosts returns every host that curls the server: the clients, then the
// far host.
func (l *lan) hosts() []*nettest.NS { return append(append([]*nettest.NS(nil), l.clients...), l.far) }

// curlServer fetches from the server at a from ns and checks the answer.
func curlServer(t *testing.T, ns *nettest.NS, a netip.Addr) {
	t.Helper()
	if out := curl(t, ns, url("http", a, 8080)); !strings.HasPrefix(out, "hello from skylane") {
		t.Fatalf("curl %v from %s: %q", a, ns.Name, out)
	}
}

// TestLANNextHops: a user-space HTTP server, with no --peer-mac, answers
// the kernel's curl from every client on the bridge and from the far host
// behind the router, over IPv4 and IPv6, on AF_XDP (skylane serve on a
// nexus of its own) and AF_PACKET (skylane nexus, serve --nexus as its
// app, and skylane stats showing the next hops); a client that changes its
// MAC is answered again within macChangeBound.
func TestLANNextHops(t *testing.T) {
	nettest.RequireCommand(t, "curl")
	bin := skylaneBinary(t)
	for _, d := range ethDrivers {
		t.Run(d, func(t *testing.T) {
			l := newLAN(t)
			var sock string
			if d == drivers.AFXDP {
				startServeProc(t, l.server, bin, "--driver", d, "--dev", "lan0", "--addr", ":8080", "--metrics", "127.0.0.1:9464")
			} else {
				sock = filepath.Join(sharedDir(t), "nexus.sock")
				startProc(t, l.server.Command, bin, []string{"nexus", "--driver", d, "--dev", "lan0", "--socket", sock,
					"--metrics", "127.0.0.1:9464"}, `msg="nexus started"`)
				// An app of the nexus: the namespace it runs in does not matter.
				startProc(t, exec.CommandContext, bin, []string{"serve", "--nexus", sock, "--addr", ":8080"}, "user-space TCP/IP stack")
			}
			for _, h := range l.hosts() {
				curlServer(t, h, lanServer4)
				curlServer(t, h, lanServer6)
			}

			// Client 0 is replaced by a host with another MAC.
			c := l.clients[0]
			ipIn(t, c, "link set dev lan0 address 02:5c:00:00:00:42")
			for _, a := range []netip.Addr{lanServer4, lanServer6} {
				start := time.Now()
				curlServer(t, c, a)
				if el := time.Since(start); el > macChangeBound {
					t.Errorf("client with a new MAC answered after %v over %v, want within %v", el, a, macChangeBound)
				} else {
					t.Logf("client with a new MAC answered after %v over %v", el.Round(time.Millisecond), a)
				}
			}

			m := scrapeMetrics(t, l.server)
			for _, c := range []struct {
				series string
				min    float64
			}{
				{"skylane_neigh_routes", 8},              // 3 clients and the far host, both families
				{"skylane_neigh_route_queries_total", 8}, // one per remote at least
				{"skylane_neigh_pending_sent_total", 8},  // each remote's first packet waited, then left
				{"skylane_neigh_mac_changes_total", 2},   // client 0's, in both tables
				{"skylane_neigh_solicits_sent_total", 5}, // 3 clients and the router (2 addresses) asked of the kernel
				{`skylane_drops_total{dir="tx",place="switch",reason="neigh_hold_full"}`, 0},
			} {
				if v := m[c.series]; v < c.min {
					t.Errorf("%s = %v, want at least %v", c.series, v, c.min)
				}
			}
			for _, s := range []string{"skylane_neigh_no_route_total", `skylane_drops_total{dir="tx",place="switch",reason="neigh_expired"}`} {
				if m[s] != 0 {
					t.Errorf("%s = %v, want 0", s, m[s])
				}
			}
			if sock != "" {
				checkStatsNextHops(t, bin, sock)
			}
		})
	}
}

// checkStatsNextHops: skylane stats lists the far host's routes via the
// router (IPv4 by its address, IPv6 by its link-local one) and the
// clients on-link, with the MACs in use.
func checkStatsNextHops(t *testing.T, bin, sock string) {
	t.Helper()
	st := nexusStats(t, bin, sock)
	if st.L2 == nil {
		t.Fatal("stats: no next hops")
	}
	via := map[netip.Addr]netip.Addr{}
	for _, r := range st.L2.Routes {
		via[r.Remote] = r.Via
		if r.MAC == "" {
			t.Errorf("stats: route to %v has no MAC: %+v", r.Remote, r)
		}
	}
	for remote, want := range map[netip.Addr]netip.Addr{lanFar4: lanRouter4, lanFar6: lanRouterLL,
		lanClient4(1): lanClient4(1), lanClient6(2): lanClient6(2)} {
		if via[remote] != want {
			t.Errorf("stats: route to %v via %v, want %v (routes %+v)", remote, via[remote], want, st.L2.Routes)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "stats", "--nexus", sock).CombinedOutput()
	if err != nil {
		t.Fatalf("skylane stats: %v: %s", err, out)
	}
	for _, want := range []string{"next hops:", "route to", lanFar6.String(), lanRouterLL.String(), "on-link"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("skylane stats says no %q:\n%s", want, out)
		}
	}
	t.Logf("skylane stats:\n%s", out)
}

// scrapeMetrics reads the nexus's Prometheus text at 127.0.0.1:9464 in ns
// into series → value.
func scrapeMetrics(t *testing.T, ns *nettest.NS) map[string]float64 {
	t.Helper()
	out := curl(t, ns, "http://127.0.0.1:9464/metrics")
	m := map[string]float64{}
	for _, line := range strings.Split(out, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m
}

// TestNextHopHoldBounds: datagrams to an on-link address nobody answers
// wait in the hold queue, at most its bound (the rest refused, counted),
// and are dropped and counted once the kernel gives up; a remote the
// kernel has no route for is refused at once, counted; neither disturbs
// the peer, which is still answered.
func TestNextHopHoldBounds(t *testing.T) {
	w := newWorld(t, drivers.AFPacket)
	pc, err := w.st.ListenPacket("udp4", netip.AddrPortFrom(w.user4, 7000).String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	const sent = 100
	silent := netip.MustParseAddrPort("198.18.0.99:7000") // on-link, no host
	for i := range sent {
		if _, err := pc.WriteTo(fmt.Appendf(nil, "to nobody #%d", i), net.UDPAddrFromAddrPort(silent)); err != nil {
			t.Fatal(err)
		}
	}
	noRoute := netip.MustParseAddrPort("203.0.113.1:7000") // the world's namespace has no default route
	if _, err := pc.WriteTo([]byte("nowhere"), net.UDPAddrFromAddrPort(noRoute)); err != nil {
		t.Fatal(err)
	}
	// The silent address's queue fills; the no-route datagram waits for
	// its answer too, then is dropped as unreachable.
	held := uint64(neigh.DefaultRoutesPendingPerAddr)
	deadline := time.Now().Add(neigh.DefaultResolveTimeout + opTimeout)
	for {
		snap, err := w.nx.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		l2 := snap.L2
		if l2 != nil && l2.Switch.Held == held+1 && l2.Switch.HoldDrops == sent-held &&
			l2.Resolver.PendingExpired == held+1 && l2.Resolver.NoRoute == 1 && l2.Resolver.Failed == 1 {
			drops := map[string]uint64{}
			for _, d := range snap.Drops {
				drops[d.Reason] = d.Packets
			}
			if drops["neigh_hold_full"] != sent-held || drops["neigh_expired"] != held+1 {
				t.Errorf("drops: hold full %d, expired %d", drops["neigh_hold_full"], drops["neigh_expired"])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %+v", neigh.DefaultResolveTimeout+opTimeout, l2)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The peer is answered meanwhile and after.
	peer := netip.AddrPortFrom(w.peer4, 7001)
	var kc net.PacketConn
	if err := w.peer.Do(func() (err error) { kc, err = net.ListenPacket("udp4", peer.String()); return err }); err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	if _, err := pc.WriteTo([]byte("to the peer"), net.UDPAddrFromAddrPort(peer)); err != nil {
		t.Fatal(err)
	}
	kc.SetReadDeadline(time.Now().Add(opTimeout))
	buf := make([]byte, 64)
	if n, _, err := kc.ReadFrom(buf); err != nil || string(buf[:n]) != "to the peer" {
		t.Fatalf("peer read %q, %v", buf[:n], err)
	}
}
