package drivers_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/afpacket"
	"github.com/skylane/skylane/netif/afxdp"
	"github.com/skylane/skylane/netif/drivers"
	"github.com/skylane/skylane/netif/steer"
	"github.com/skylane/skylane/netif/tun"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/nexus/inproc"
	"github.com/skylane/skylane/packet"
)

// TestSpecErrors: every spec a driver cannot take is refused before any
// system call, under the sentinel that says why.
func TestSpecErrors(t *testing.T) {
	for _, c := range []struct {
		spec drivers.Spec
		is   error
		want string
	}{
		{drivers.Spec{Driver: "dpdk", Dev: "eth0"}, drivers.ErrUnsupported, "have: memif, tun, afpacket, afxdp"},
		{drivers.Spec{Driver: ""}, drivers.ErrUnsupported, "unsupported driver"},
		{drivers.Spec{Driver: drivers.AFXDP, Dev: "eth0", Mode: "turbo"}, drivers.ErrUnsupported, "have: generic, native"},
		{drivers.Spec{Driver: drivers.AFPacket, Dev: "eth0", Mode: drivers.ModeNative}, drivers.ErrUnsupported, "have: steer, tap"},
		{drivers.Spec{Driver: drivers.TUN, Mode: drivers.ModeSteer}, drivers.ErrUnsupported, "no modes"},
		{drivers.Spec{Driver: drivers.AFXDP}, drivers.ErrBadSpec, "name the interface"},
		{drivers.Spec{Driver: drivers.AFPacket, Dev: "averyveryverylongname"}, drivers.ErrBadSpec, "longer than 15"},
		{drivers.Spec{Driver: drivers.AFXDP, Dev: "eth0", Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.0.1/24")}}, drivers.ErrBadSpec, "ip addr"},
		{drivers.Spec{Driver: drivers.AFPacket, Dev: "eth0", MTU: 9000}, drivers.ErrBadSpec, "ip link set eth0 mtu"},
		{drivers.Spec{Driver: drivers.TUN, Queue: 1}, drivers.ErrBadSpec, "AF_XDP only"},
		{drivers.Spec{Driver: drivers.Memif, MTU: 10}, drivers.ErrBadSpec, "MTU"},
	} {
		l, err := drivers.Open(c.spec)
		if err == nil {
			l.Close()
		}
		if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v; want %v containing %q", c.spec, err, c.is, c.want)
		}
	}
}

// TestMemif: the in-memory driver needs nothing and hands out both ends.
func TestMemif(t *testing.T) {
	l, err := drivers.Open(drivers.Spec{Driver: drivers.Memif, Dev: "m"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	p, ok := l.(*drivers.Pair)
	if !ok {
		t.Fatalf("memif link is %T, want *drivers.Pair", l)
	}
	frame := make([]byte, 60)
	frame[0] = 0xaa
	if n, err := l.Write([][]byte{frame}); n != 1 || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	bufs := [][]byte{make([]byte, netif.MaxFrameLen(p.Peer().MTU(), p.Peer().LinkType()))}
	sizes := []int{0}
	if err := p.Peer().Wait(time.Second); err != nil {
		t.Fatal(err)
	}
	if n, err := p.Peer().Read(bufs, sizes); n != 1 || err != nil || sizes[0] != 60 || bufs[0][0] != 0xaa {
		t.Fatalf("peer read: %d, %v, %d bytes", n, err, sizes[0])
	}
}

// TestNotRoot: without the capabilities a driver needs, Open and
// CheckPrivileges say so (ErrNotRoot, naming the capabilities) before
// touching the device. Capabilities are per thread: the test drops them on
// a locked thread it never unlocks (the runtime retires it), so it also
// runs as root.
func TestNotRoot(t *testing.T) {
	for _, s := range []drivers.Spec{
		{Driver: drivers.AFXDP, Dev: "nonexistent0"},
		{Driver: drivers.AFPacket, Dev: "nonexistent0"},
		{Driver: drivers.AFPacket, Dev: "nonexistent0", Mode: drivers.ModeTap},
		{Driver: drivers.TUN},
	} {
		errs := make(chan error, 2)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
			if err := dropCaps(); err != nil {
				errs <- err
				errs <- err
				return
			}
			errs <- drivers.CheckPrivileges(s)
			_, err := drivers.Open(s)
			errs <- err
		}()
		for range 2 {
			err := <-errs
			if !errors.Is(err, drivers.ErrNotRoot) || !strings.Contains(err.Error(), "CAP_") {
				t.Errorf("%+v without capabilities: %v, want ErrNotRoot naming capabilities", s, err)
			}
		}
	}
	if err := drivers.CheckPrivileges(drivers.Spec{Driver: drivers.Memif}); err != nil {
		t.Errorf("memif needs no privilege: %v", err)
	}
}

func dropCaps() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return err
	}
	data[0].Effective, data[1].Effective = 0, 0
	return unix.Capset(&hdr, &data[0])
}

// TestOpenEachDriver opens every kernel driver on a real device, as root,
// and checks each is the driver's own type (so its optional interfaces
// show), and the device errors: missing, not Ethernet.
func TestOpenEachDriver(t *testing.T) {
	nettest.RequirePriv(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	err := v.Local.Do(func() error {
		for _, c := range []struct {
			spec  drivers.Spec
			check func(netif.Link) bool
		}{
			{drivers.Spec{Driver: drivers.AFXDP, Dev: v.LocalName}, func(l netif.Link) bool { _, ok := l.(afxdp.Link); return ok }},
			{drivers.Spec{Driver: drivers.AFXDP, Dev: v.LocalName, Mode: drivers.ModeNative}, func(l netif.Link) bool { _, ok := l.(afxdp.Link); return ok }},
			{drivers.Spec{Driver: drivers.AFPacket, Dev: v.LocalName}, func(l netif.Link) bool {
				p, ok := l.(*afpacket.Link)
				if !ok {
					return false
				}
				// Steering is on by default: the map takes a key.
				k := packet.MakeKey(packet.ProtoTCP, netip.MustParseAddrPort("198.18.0.1:80"), netip.AddrPort{})
				return p.SteerFlow(k) == nil && p.UnsteerFlow(k) == nil
			}},
			{drivers.Spec{Driver: drivers.AFPacket, Dev: v.LocalName, Mode: drivers.ModeTap}, func(l netif.Link) bool {
				k := packet.MakeKey(packet.ProtoTCP, netip.MustParseAddrPort("198.18.0.1:80"), netip.AddrPort{})
				return errors.Is(l.(netif.FlowSteerer).SteerFlow(k), afpacket.ErrNoSteering)
			}},
			{drivers.Spec{Driver: drivers.TUN, Dev: "sktdrv0", Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.1.1/24")}}, func(l netif.Link) bool {
				_, ok := l.(*tun.Link)
				return ok && l.Name() == "sktdrv0" && l.LinkType() == packet.RawIP
			}},
		} {
			l, err := drivers.Open(c.spec)
			if err != nil {
				t.Errorf("%+v: %v", c.spec, err)
				continue
			}
			if !c.check(l) {
				t.Errorf("%+v: link %T does not look like its driver's", c.spec, l)
			}
			if err := l.Close(); err != nil {
				t.Errorf("%+v: close: %v", c.spec, err)
			}
		}
		for _, c := range []struct {
			spec drivers.Spec
			is   error
			want string
		}{
			{drivers.Spec{Driver: drivers.AFXDP, Dev: "nonexistent0"}, drivers.ErrNoInterface, "ip link"},
			{drivers.Spec{Driver: drivers.AFPacket, Dev: "nonexistent0"}, drivers.ErrNoInterface, "ip netns exec"},
			{drivers.Spec{Driver: drivers.AFXDP, Dev: "lo"}, drivers.ErrUnsupported, "not Ethernet"},
		} {
			l, err := drivers.Open(c.spec)
			if err == nil {
				l.Close()
			}
			if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%+v: %v; want %v containing %q", c.spec, err, c.is, c.want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestKernelPorts: a kernel socket on the wildcard address or on one of
// the given addresses takes its port; one on another address (loopback)
// does not; a closed one gives it back. TCP and UDP are told apart.
func TestKernelPorts(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	kp, err := drivers.NewKernelPorts([]netip.Addr{netip.MustParseAddr("198.18.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	defer kp.Close()
	any, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	anyPort := uint16(any.Addr().(*net.TCPAddr).Port)
	loopback, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer loopback.Close()
	loPort := uint16(loopback.Addr().(*net.TCPAddr).Port)
	udp, err := net.ListenUDP("udp", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	udpPort := uint16(udp.LocalAddr().(*net.UDPAddr).Port)

	if who, ok := kp.Holder(packet.ProtoTCP, anyPort); !ok || !strings.Contains(who, "LISTEN") {
		t.Errorf("TCP %d on the wildcard address: %q, %v", anyPort, who, ok)
	}
	if kp.Taken(packet.ProtoUDP, anyPort) && !kp.Taken(packet.ProtoUDP, udpPort) {
		t.Errorf("UDP and TCP not told apart")
	}
	if !kp.Taken(packet.ProtoUDP, udpPort) {
		t.Errorf("UDP %d on the wildcard address not taken", udpPort)
	}
	if kp.Taken(packet.ProtoTCP, loPort) {
		t.Errorf("TCP %d on %v counted against other addresses", loPort, lo)
	}
	onLo, err := drivers.NewKernelPorts([]netip.Addr{lo})
	if err != nil {
		t.Fatal(err)
	}
	defer onLo.Close()
	if !onLo.Taken(packet.ProtoTCP, loPort) {
		t.Errorf("TCP %d on %v not taken for %v", loPort, lo, lo)
	}
	any.Close()
	if kp.Taken(packet.ProtoTCP, anyPort) {
		t.Errorf("TCP %d still taken once closed", anyPort)
	}
	kp.Close()
	if !kp.Taken(packet.ProtoTCP, 1) {
		t.Errorf("a closed KernelPorts does not refuse")
	}
}

// TestKernelPortsNamespace: a KernelPorts answers for the namespace it was
// made in, whatever thread asks later.
func TestKernelPortsNamespace(t *testing.T) {
	nettest.RequirePriv(t)
	ns := nettest.NewNS(t)
	var kp *drivers.KernelPorts
	var ln net.Listener
	err := ns.Do(func() (err error) {
		if kp, err = drivers.NewKernelPorts(nil); err != nil {
			return err
		}
		ln, err = net.Listen("tcp", ":4242")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer kp.Close()
	defer ln.Close()
	here, err := net.Listen("tcp", ":0") // in the test's own namespace
	if err != nil {
		t.Fatal(err)
	}
	defer here.Close()
	if !kp.Taken(packet.ProtoTCP, 4242) {
		t.Errorf("the namespace's listener on 4242 not seen from another thread")
	}
	if p := uint16(here.Addr().(*net.TCPAddr).Port); kp.Taken(packet.ProtoTCP, p) {
		t.Errorf("a listener of another namespace (port %d) seen", p)
	}
}

// TestSteering: the nexus keeps a stack's flows in the device's steering
// map exactly while they are registered: a listener from Listen to Close, a
// dialed connection from before its SYN to its end, everything until
// Stack.Close; a port's flows also leave it when its channel turns defunct,
// and when the nexus closes. A listener on a port a kernel socket holds is
// refused (flowswitch.Options.PortTaken). On AF_XDP, where nothing reaches
// the stack unsteered.
func TestSteering(t *testing.T) {
	nettest.RequirePriv(t)
	nettest.RequireCommand(t, "ethtool")
	v := nettest.NewVeth(t, nettest.VethOptions{})
	// A veth hands XDP the peer's partial checksums: make the peer send
	// complete ones, as a wire delivers them.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := v.Peer.Command(ctx, "ethtool", "-K", v.PeerName, "tx", "off").CombinedOutput(); err != nil {
		t.Fatalf("ethtool: %v: %s", err, out)
	}
	var link netif.Link
	var kp *drivers.KernelPorts
	var kln, peerLn net.Listener
	flows, err := steer.NewFlows(steer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer flows.Close()
	local := v.LocalAddr.Addr()
	err = v.Local.Do(func() (err error) {
		if link, err = drivers.Open(drivers.Spec{Driver: drivers.AFXDP, Dev: v.LocalName, Flows: flows}); err != nil {
			return err
		}
		if kp, err = drivers.NewKernelPorts([]netip.Addr{local}); err != nil {
			return err
		}
		kln, err = net.Listen("tcp", ":9000")
		return err
	})
	if err != nil {
		if link != nil {
			link.Close()
		}
		t.Fatal(err)
	}
	defer kln.Close()
	defer kp.Close()
	if err := v.Peer.Do(func() (err error) { peerLn, err = net.Listen("tcp", ":9001"); return err }); err != nil {
		t.Fatal(err)
	}
	defer peerLn.Close()
	go func() {
		for {
			c, err := peerLn.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	swo := flowswitchMACs(v)
	swo.PortTaken = kp.Taken
	nx, err := nexus.New(nexus.Options{Link: link, Addrs: []netip.Addr{local}, Switch: swo})
	if err != nil {
		link.Close()
		t.Fatal(err)
	}
	defer nx.Close()
	st, err := client.New(inproc.Nexus(nx), client.Options{TimeWait: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	steered := func(k packet.Key) bool {
		ok, err := flows.Contains(k)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}

	if _, err := st.Listen("tcp4", ":9000"); !errors.Is(err, flow.ErrPortInUse) || !strings.Contains(err.Error(), "kernel socket") {
		t.Errorf("listen on the kernel's port: %v, want flow.ErrPortInUse naming the kernel socket", err)
	}
	ln, err := st.Listen("tcp4", "198.18.0.1:8000")
	if err != nil {
		t.Fatal(err)
	}
	lk := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(local, 8000), netip.AddrPort{})
	if !steered(lk) {
		t.Errorf("listener %v not steered while listening", lk)
	}
	ln.Close()
	if steered(lk) {
		t.Errorf("listener %v still steered after Close", lk)
	}

	c, err := st.DialContext(ctx, "tcp4", "198.18.0.2:9001")
	if err != nil {
		t.Fatal(err)
	}
	la := c.LocalAddr().(*net.TCPAddr).AddrPort()
	ck := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(local, la.Port()), netip.MustParseAddrPort("198.18.0.2:9001"))
	if !steered(ck) {
		t.Errorf("connection %v not steered", ck)
	}
	c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for steered(ck) {
		if time.Now().After(deadline) {
			t.Fatalf("connection %v still steered 10 s after it closed", ck)
		}
		time.Sleep(20 * time.Millisecond)
	}

	ln, err = st.Listen("tcp4", ":8001")
	if err != nil {
		t.Fatal(err)
	}
	lk = packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(netip.IPv4Unspecified(), 8001), netip.AddrPort{})
	if !steered(lk) {
		t.Errorf("listener %v on any address not steered", lk)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if steered(lk) {
		t.Errorf("listener %v still steered after Stack.Close", lk)
	}

	// A port whose channel the nexus finds defunct: its flows go back to
	// the kernel before the app closes the port.
	bad, err := nx.OpenPort("bad")
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	bk := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(local, 8002), netip.AddrPort{})
	if _, err := bad.Register(bk, flow.Listener3); err != nil {
		t.Fatal(err)
	}
	if !steered(bk) {
		t.Errorf("raw port's listener %v not steered after Register", bk)
	}
	if _, err := bad.App().Send([]channel.Buf{{Index: 12345, Data: make([]byte, 60)}}); err != nil {
		t.Fatal(err)
	}
	bad.Kick()
	if err := bad.Wait(func() bool { return false }, 10*time.Second); !errors.Is(err, nexus.ErrClosed) {
		t.Fatalf("wait on the defunct port: %v, want nexus.ErrClosed", err)
	}
	if steered(bk) {
		t.Errorf("listener %v still steered after its channel turned defunct", bk)
	}

	// The nexus's Close unsteers the flows of the ports still open.
	p, err := nx.OpenPort("open")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	pk := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(local, 8003), netip.AddrPort{})
	if _, err := p.Register(pk, flow.Listener3); err != nil {
		t.Fatal(err)
	}
	if !steered(pk) {
		t.Errorf("listener %v not steered after Register", pk)
	}
	if err := nx.Close(); err != nil {
		t.Fatal(err)
	}
	if steered(pk) {
		t.Errorf("listener %v still steered after the nexus closed", pk)
	}
}

// flowswitchMACs is the static L2 of the veth: until the flowswitch
// resolves neighbours, the peer's MAC is the only next hop.
func flowswitchMACs(v *nettest.Veth) flowswitch.Options {
	return flowswitch.Options{SrcMAC: [6]byte(v.LocalMAC), DstMAC: [6]byte(v.PeerMAC)}
}
