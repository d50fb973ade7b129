package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"gvisor.dev/gvisor/pkg/refs"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/neigh"
	"github.com/skylane/skylane/neigh/kernel"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/afxdp"
	"github.com/skylane/skylane/netif/drivers"
	"github.com/skylane/skylane/netif/steer"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/nexus/inproc"
	"github.com/skylane/skylane/packet"
)

// TestMain fails the run if a netstack buffer is still referenced once
// every test closed its stacks.
func TestMain(m *testing.M) {
	if os.Getenv(connClientEnv) != "" {
		os.Exit(connClient()) // a kernel client of TestManyConnections, in the peer namespace
	}
	refs.SetLeakMode(refs.LeaksPanic)
	code := m.Run()
	removeBinary()
	refs.DoLeakCheck()
	os.Exit(code)
}

// Drivers under test: AF_XDP in generic mode (every device has it), AF_PACKET
// with the TC steering program, TUN.
var ethDrivers = []string{drivers.AFXDP, drivers.AFPacket}

var allDrivers = []string{drivers.AFXDP, drivers.AFPacket, drivers.TUN}

// Addresses of the TUN world: the kernel's side of the device and the
// user-space stack behind it (one /24 and one /64, both routed into the
// device by the kernel's addresses).
var (
	tunKernel4 = netip.MustParsePrefix("198.18.1.1/24")
	tunUser4   = netip.MustParseAddr("198.18.1.2")
	tunKernel6 = netip.MustParsePrefix("2001:2:1::1/64")
	tunUser6   = netip.MustParseAddr("2001:2:1::2")
)

// Ports the tests use (each world is in its own namespaces, so they never
// collide across tests).
const (
	userPort   = 8080 // the user-space HTTP server
	kernelPort = 9090 // a kernel server beside it
	userUDP    = 5353 // a user-space UDP echo
	kernelUDP  = 5354 // a kernel UDP echo beside it
	peerPort   = 9191 // a kernel server in the peer namespace
)

// opTimeout bounds every single operation of a test (a curl, a dial, a
// wait for a packet); a test's whole run is a few of them.
const opTimeout = 20 * time.Second

// world is one user-space stack on one driver and its kernel peer.
//
// Ethernet drivers: a veth pair; the link is on the local end, which also
// carries the kernel's addresses (the user-space stack shares them and owns
// its ports); the peer namespace is an ordinary kernel host.
//
// TUN: one namespace; the device's kernel side has tunKernel4/6 and routes
// the subnet into the device, toward the user-space stack at tunUser4/6.
// The namespace's kernel is the peer.
type world struct {
	driver       string
	local, peer  *nettest.NS
	dev          string // the link's device, in local
	capIf        string // where the peer sees our packets, in peer
	user4, user6 netip.Addr
	peer4, peer6 netip.Addr // the kernel peer's addresses
	veth         *nettest.Veth

	link netif.Link
	nx   *nexus.Nexus
	kp   *drivers.KernelPorts
	nh   *kernel.Follower  // next hops from the kernel's tables; nil on TUN
	res  *drivers.Reserver // the apps' listener ports in the kernel (Ethernet drivers)
	st   *client.Stack
}

// newWorld builds the world of driver with a nexus on it and one stack.
// Everything is closed when the test ends, the link before the veth, and
// the device is checked to carry no program afterwards.
func newWorld(t *testing.T, driver string) *world {
	t.Helper()
	return newWorldWith(t, driver, flowswitch.Options{})
}

// newWorldWith is newWorld with the switch's options swo (its MACs and
// PortTaken are the world's).
func newWorldWith(t *testing.T, driver string, swo flowswitch.Options) *world {
	t.Helper()
	nettest.RequirePriv(t)
	w := &world{driver: driver}
	var spec drivers.Spec
	if driver == drivers.TUN {
		ns := nettest.NewNS(t)
		w.local, w.peer = ns, ns
		w.dev = uniqueName("skt")
		w.capIf = w.dev
		w.user4, w.user6 = tunUser4, tunUser6
		w.peer4, w.peer6 = tunKernel4.Addr(), tunKernel6.Addr()
		spec = drivers.Spec{Driver: driver, Dev: w.dev, Addrs: []netip.Prefix{tunKernel4, tunKernel6}}
		swo.AnswerAsHost = true // the user-space addresses are the nexus's alone
	} else {
		v := nettest.NewVeth(t, nettest.VethOptions{})
		w.veth = v
		w.local, w.peer = v.Local, v.Peer
		w.dev, w.capIf = v.LocalName, v.PeerName
		w.user4, w.user6 = v.LocalAddr.Addr(), v.LocalAddr6.Addr()
		w.peer4, w.peer6 = v.PeerAddr.Addr(), v.PeerAddr6.Addr()
		spec = drivers.Spec{Driver: driver, Dev: w.dev}
		// Next hops as skylane serve resolves them: through the
		// kernel's tables (neigh/kernel), no static MAC.
		swo.SrcMAC = [6]byte(v.LocalMAC)
		if driver == drivers.AFXDP {
			// AF_PACKET completes the peer's partial checksums and
			// splits its super packets (virtio headers); AF_XDP
			// cannot see that they are partial.
			wireChecksums(t, v)
		}
	}
	addrs := []netip.Addr{w.user4, w.user6}
	var eph [2]uint16
	err := w.local.Do(func() (err error) {
		if w.link, err = drivers.Open(spec); err != nil {
			return err
		}
		if w.kp, err = drivers.NewKernelPorts(addrs); err != nil {
			return err
		}
		if w.veth != nil {
			eph, _ = drivers.AppEphemeral() // the namespace's kernel range
			if w.res, err = drivers.NewReserver(w.veth.LocalIndex); err != nil {
				return err
			}
			w.nh, err = kernel.Follow(kernel.Options{LinkIndex: w.veth.LocalIndex,
				Routes: neigh.RoutesOptions{MAC: neigh.MAC(w.veth.LocalMAC)}})
		}
		return err
	})
	if err != nil {
		if w.link != nil {
			w.link.Close()
		}
		if w.kp != nil {
			w.kp.Close()
		}
		if w.res != nil {
			w.res.Close()
		}
		t.Fatalf("open %s: %v", driver, err)
	}
	if w.nh != nil {
		swo.Neighbors = w.nh.Routes()
	}
	swo.PortTaken = w.kp.Taken
	no := nexus.Options{Link: w.link, Addrs: addrs, Switch: swo}
	if w.res != nil {
		// As skylane serve and nexus do: one port namespace with the
		// kernel.
		no.Reserve = func(k packet.Key) (nexus.Reservation, error) {
			r, err := w.res.Reserve(k)
			if err != nil {
				return nil, err
			}
			return r, nil
		}
		no.Ephemeral = eph
	}
	if w.nx, err = nexus.New(no); err != nil {
		w.link.Close()
		w.kp.Close()
		if w.res != nil {
			w.res.Close()
		}
		if w.nh != nil {
			w.nh.Close()
		}
		t.Fatalf("nexus on %s: %v", driver, err)
	}
	t.Cleanup(func() {
		if err := w.nx.Close(); err != nil {
			t.Errorf("close nexus: %v", err)
		}
		w.kp.Close()
		if w.res != nil {
			w.res.Close()
		}
		if w.nh != nil {
			if err := w.nh.Close(); err != nil {
				t.Errorf("close next-hop follower: %v", err)
			}
		}
		w.checkDetached(t)
	})
	t.Cleanup(func() {
		if t.Failed() {
			w.logStats(t)
		}
	})
	w.st = w.newStack(t, "web")
	return w
}

// newStack opens another user-space stack on the world's nexus.
func (w *world) newStack(t *testing.T, name string) *client.Stack {
	t.Helper()
	return w.newStackWith(t, client.Options{Name: name})
}

// newStackWith is newStack with options (TimeWait set here).
func (w *world) newStackWith(t *testing.T, o client.Options) *client.Stack {
	t.Helper()
	name := o.Name
	o.TimeWait = time.Second
	st, err := client.New(inproc.Nexus(w.nx), o)
	if err != nil {
		t.Fatalf("stack: %v", err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("close stack %s: %v", name, err)
		}
	})
	return st
}

// logStats logs the counters that tell where packets went, for a failed
// test.
func (w *world) logStats(t *testing.T) {
	st, err := w.nx.Stats()
	if err != nil {
		t.Logf("nexus stats: %v", err)
		return
	}
	t.Logf("switch: %+v", st.Switch)
	t.Logf("link %s: %+v", w.dev, st.Link)
	if x, ok := w.link.(afxdp.Link); ok {
		t.Logf("AF_XDP: %+v", x.XDPStats())
	}
	if c, ok := w.link.(interface {
		Counters() (steer.Counters, error)
	}); ok {
		cs, err := c.Counters()
		t.Logf("steering program: %+v %v", cs, err)
	}
}

// checkDetached verifies that the closed link left no XDP or TCX program
// on the device (a TUN device is gone with its link).
func (w *world) checkDetached(t *testing.T) {
	if w.driver == drivers.TUN {
		return
	}
	err := w.local.Do(func() error {
		nl, err := w.local.Netlink()
		if err != nil {
			return err
		}
		defer nl.Close()
		l, err := nl.LinkByName(w.dev)
		if err != nil {
			return err
		}
		if x := l.Attrs().Xdp; x != nil && x.Attached {
			t.Errorf("%s: XDP program %d still attached after close", w.dev, x.ProgId)
		}
		q, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		if len(q.Programs) > 0 {
			t.Errorf("%s: %d TCX ingress programs still attached after close", w.dev, len(q.Programs))
		}
		return nil
	})
	if err != nil {
		t.Errorf("check %s after close: %v", w.dev, err)
	}
}

// serveHTTP serves a small page from ln until the test ends.
func serveHTTP(t *testing.T, ln net.Listener, banner string) {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(rw http.ResponseWriter, r *http.Request) {
		rw.Write([]byte(banner + " to " + r.RemoteAddr + "\n"))
	})
	serveMux(t, ln, mux)
}

// serveMux serves h from ln until the test ends.
func serveMux(t *testing.T, ln net.Listener, h http.Handler) {
	t.Helper()
	banner := ln.Addr().String()
	srv := &http.Server{Handler: h, ReadHeaderTimeout: opTimeout}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("%s: serve: %v", banner, err)
		}
	})
}

// curl runs the kernel's curl in ns and returns what it printed; it fails
// the test on error.
func curl(t *testing.T, ns *nettest.NS, args ...string) string {
	t.Helper()
	nettest.RequireCommand(t, "curl")
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	args = append([]string{"-sS", "--max-time", "10", "--connect-timeout", "5"}, args...)
	out, err := ns.Command(ctx, "curl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("curl %s in %s: %v: %s", strings.Join(args, " "), ns.Name, err, out)
	}
	return string(out)
}

// url is http://addr:port/ with IPv6 brackets.
func url(scheme string, a netip.Addr, port uint16) string {
	return scheme + "://" + netip.AddrPortFrom(a, port).String() + "/"
}

func uniqueName(prefix string) string {
	var b [4]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// wireChecksums makes the peer's veth send frames as a wire carries them:
// with complete checksums and MTU-sized. A veth otherwise hands the
// local end TCP and UDP frames with a partial checksum (CHECKSUM_PARTIAL:
// only the pseudo-header sum, the rest left to an offload no one runs)
// and super packets (TSO), which the kernel's stack accepts on trust but
// XDP and AF_XDP see raw: netstack then drops every segment as corrupt,
// and AF_XDP drops super packets as too long for a frame. Turning the
// peer's transmit checksum offload off also turns off TSO, which needs it.
func wireChecksums(t *testing.T, v *nettest.Veth) {
	t.Helper()
	nettest.RequireCommand(t, "ethtool")
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if out, err := v.Peer.Command(ctx, "ethtool", "-K", v.PeerName, "tx", "off").CombinedOutput(); err != nil {
		t.Fatalf("ethtool -K %s tx off: %v: %s", v.PeerName, err, out)
	}
}
