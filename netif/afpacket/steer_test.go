package afpacket_test

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/gopacket/gopacket/layers"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/afpacket"
	"github.com/skylane/skylane/netif/steer"
	"github.com/skylane/skylane/packet"
)

// tcxPrograms counts the TCX ingress programs attached to the local end.
func tcxPrograms(t testing.TB, v *nettest.Veth) int {
	t.Helper()
	var n int
	if err := v.Local.Do(func() error {
		r, err := link.QueryPrograms(link.QueryOptions{Target: v.LocalIndex, Attach: ebpf.AttachTCXIngress})
		if err == nil {
			n = len(r.Programs)
		}
		return err
	}); err != nil {
		t.Fatalf("query TCX programs: %v", err)
	}
	return n
}

// TestSteerUDP: with a kernel UDP socket bound to the same port on the
// local side, a steered flow's datagrams reach the Link and not the socket;
// after UnsteerFlow the socket gets them again (and the Link, a tap, still
// sees them).
func TestSteerUDP(t *testing.T) {
	v, l := newLink(t, nettest.VethOptions{}, afpacket.Options{Steer: true})
	local := netip.AddrPortFrom(v.LocalAddr.Addr(), 7000)
	var kern *net.UDPConn
	if err := v.Local.Do(func() (err error) {
		kern, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(local))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer kern.Close()
	peer := listenUDP(t, v.Peer, v.PeerAddr.Addr())
	key := packet.MakeKey(packet.ProtoUDP, local, netip.AddrPort{}) // a listener: any remote
	if err := l.SteerFlow(key); err != nil {
		t.Fatal(err)
	}
	r := newFrameReader(t, l, l.MaxSuperPacketLen())
	payload := func(b []byte) string {
		return string(decode(t, b).TransportLayer().LayerPayload())
	}
	const steered = 3
	for i := range steered {
		msg := []byte{'s', 't', 'e', 'e', 'r', 'e', 'd', '0' + byte(i)}
		if _, err := peer.WriteToUDPAddrPort(msg, local); err != nil {
			t.Fatal(err)
		}
		if got := payload(r.until(udpTo(7000))); got != string(msg) {
			t.Fatalf("Link read %q, want %q", got, msg)
		}
	}
	if c, err := l.Counters(); err != nil || c.Hit < steered {
		t.Fatalf("TC counters %+v, %v: want at least %d hits", c, err, steered)
	}
	if err := l.UnsteerFlow(key); err != nil {
		t.Fatal(err)
	}
	if _, err := peer.WriteToUDPAddrPort([]byte("unsteered"), local); err != nil {
		t.Fatal(err)
	}
	if got := payload(r.until(udpTo(7000))); got != "unsteered" {
		t.Fatalf("Link read %q after UnsteerFlow, want the tap to see \"unsteered\"", got)
	}
	// A veth delivers in order: had a steered datagram reached the kernel
	// socket, it would be read before this one.
	_ = kern.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, err := kern.Read(buf)
	if err != nil || string(buf[:n]) != "unsteered" {
		t.Fatalf("kernel socket read %q, %v; want \"unsteered\" first (the steered datagrams kept from it)", buf[:n], err)
	}
}

// TestSteerTCPNoReset: a kernel TCP connect from the peer to a steered port
// on which the local kernel has no socket gets no RST (the SYN reaches the
// Link, not the kernel stack), where an unsteered port is refused at once;
// after UnsteerFlow the steered port is refused too. A tap on the peer end
// watches for RSTs from the local side.
func TestSteerTCPNoReset(t *testing.T) {
	v, l := newLink(t, nettest.VethOptions{}, afpacket.Options{Steer: true})
	var tap *afpacket.Link
	if err := v.Peer.Do(func() (err error) {
		tap, err = afpacket.New(afpacket.Options{Interface: v.PeerName})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer tap.Close()
	const steeredPort, openPort = 7100, 7101
	key := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(v.LocalAddr.Addr(), steeredPort), netip.AddrPort{})
	if err := l.SteerFlow(key); err != nil {
		t.Fatal(err)
	}
	// dial connects from the peer's kernel with a time limit: a RST makes
	// it fail at once with ECONNREFUSED, no answer makes it time out.
	dial := func(port uint16) error {
		var err error
		derr := v.Peer.Do(func() error {
			d := net.Dialer{Timeout: 500 * time.Millisecond}
			var c net.Conn
			c, err = d.Dial("tcp4", netip.AddrPortFrom(v.LocalAddr.Addr(), port).String())
			if err == nil {
				c.Close()
			}
			return nil
		})
		if derr != nil {
			t.Fatal(derr)
		}
		return err
	}
	tcpFrom := func(port uint16, rst bool) func([]byte) bool {
		return func(b []byte) bool {
			p := gopacketTCP(b)
			return p != nil && uint16(p.SrcPort) == port && p.RST == rst
		}
	}
	tapReader := newFrameReader(t, tap, tap.MaxSuperPacketLen())

	// The control: an unsteered port with no socket is refused by a RST,
	// which the tap sees.
	if err := dial(openPort); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial to unsteered port %d: %v, want ECONNREFUSED", openPort, err)
	}
	tapReader.until(tcpFrom(openPort, true))

	err := dial(steeredPort)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("dial to steered port %d: %v, want a timeout (no RST, no SYN-ACK)", steeredPort, err)
	}
	syn := newFrameReader(t, l, l.MaxSuperPacketLen()).until(func(b []byte) bool {
		p := gopacketTCP(b)
		return p != nil && p.DstPort == steeredPort && p.SYN
	})
	decode(t, syn)
	if f := tapReader.within(100*time.Millisecond, tcpFrom(steeredPort, true)); f != nil {
		t.Fatalf("the local kernel reset a steered connection: % x", f)
	}

	if err := l.UnsteerFlow(key); err != nil {
		t.Fatal(err)
	}
	if err := dial(steeredPort); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial after UnsteerFlow: %v, want ECONNREFUSED", err)
	}
}

// gopacketTCP returns the TCP layer of an Ethernet frame, or nil. It
// checks no checksum (decode does).
func gopacketTCP(b []byte) *layers.TCP {
	var p packet.Parsed
	if packet.Parse(b, packet.Ethernet, &p) != nil || p.Proto != packet.ProtoTCP {
		return nil
	}
	tcp := &layers.TCP{}
	// Cut at the IP length: a short frame is padded to 60 bytes.
	if tcp.DecodeFromBytes(b[p.L4Off:p.L3Off+p.IPLen], nopFeedback{}) != nil {
		return nil
	}
	return tcp
}

type nopFeedback struct{}

func (nopFeedback) SetTruncated() {}

// TestSteerOff: without Options.Steer, SteerFlow says so (wrapping
// netif.ErrNotSteerable, so the nexus knows the kernel keeps the flow),
// UnsteerFlow has nothing to do, and no program is attached.
func TestSteerOff(t *testing.T) {
	v, l := newLink(t, nettest.VethOptions{}, afpacket.Options{})
	key := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(v.LocalAddr.Addr(), 1), netip.AddrPort{})
	if err := l.SteerFlow(key); !errors.Is(err, afpacket.ErrNoSteering) || !errors.Is(err, netif.ErrSteeringOff) || !errors.Is(err, netif.ErrNotSteerable) {
		t.Errorf("SteerFlow without Steer: %v", err)
	}
	if err := l.UnsteerFlow(key); err != nil {
		t.Errorf("UnsteerFlow without Steer: %v", err)
	}
	if _, err := l.Counters(); !errors.Is(err, afpacket.ErrNoSteering) {
		t.Errorf("Counters without Steer: %v", err)
	}
	if n := tcxPrograms(t, v); n != 0 {
		t.Errorf("%d TCX programs attached without Steer", n)
	}
	flows, err := steer.NewFlows(steer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer flows.Close()
	if _, err := afpacket.New(afpacket.Options{Interface: v.LocalName, Flows: flows}); err == nil {
		t.Error("New accepted Flows without Steer")
	}
}

// TestSteerClose: Close detaches the program, leaves a shared map open (and
// its keys alone), and SteerFlow afterwards says the link is closed. A key
// the programs cannot parse is refused.
func TestSteerClose(t *testing.T) {
	nettest.RequirePriv(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	flows, err := steer.NewFlows(steer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer flows.Close()
	var l *afpacket.Link
	if err := v.Local.Do(func() (err error) {
		l, err = afpacket.New(afpacket.Options{Interface: v.LocalName, Steer: true, Flows: flows})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	key := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(v.LocalAddr.Addr(), 1), netip.AddrPort{})
	if err := l.SteerFlow(key); err != nil {
		t.Fatal(err)
	}
	icmp := packet.MakeKey(packet.ProtoICMP, netip.AddrPortFrom(v.LocalAddr.Addr(), 0), netip.AddrPort{})
	if err := l.SteerFlow(icmp); !errors.Is(err, netif.ErrNotSteerable) {
		t.Errorf("SteerFlow(ICMP): %v, want ErrNotSteerable", err)
	}
	if n := tcxPrograms(t, v); n != 1 {
		t.Fatalf("%d TCX programs attached, want 1", n)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if n := tcxPrograms(t, v); n != 0 {
		t.Errorf("%d TCX programs attached after Close", n)
	}
	if ok, err := flows.Contains(key); err != nil || !ok {
		t.Errorf("shared map after Close: contains %v, %v; want the key kept", ok, err)
	}
	if err := l.SteerFlow(key); !errors.Is(err, netif.ErrClosed) {
		t.Errorf("SteerFlow after Close: %v", err)
	}
	if err := l.UnsteerFlow(key); !errors.Is(err, netif.ErrClosed) {
		t.Errorf("UnsteerFlow after Close: %v", err)
	}
}

// TestSteerNewFails: a New that fails while attaching the program (here:
// a closed shared map) leaves no fd, no ring mapping and no program.
func TestSteerNewFails(t *testing.T) {
	nettest.RequirePriv(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	flows, err := steer.NewFlows(steer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	flows.Close()
	open := func() error {
		return v.Local.Do(func() error {
			l, err := afpacket.New(afpacket.Options{Interface: v.LocalName, Steer: true, Flows: flows})
			if err == nil {
				l.Close()
			}
			return err
		})
	}
	_ = open() // warm up what the runtime opens once
	fds := nettest.OpenFDs(t)
	if err := open(); !errors.Is(err, steer.ErrClosed) {
		t.Fatalf("New over a closed map: %v, want steer.ErrClosed", err)
	}
	if got := nettest.OpenFDs(t); got != fds {
		t.Errorf("%d fds open after a failed New, %d before", got, fds)
	}
	if got := ringMappings(t); got != 0 {
		t.Errorf("%d ring mappings left after a failed New", got)
	}
	if n := tcxPrograms(t, v); n != 0 {
		t.Errorf("%d TCX programs attached after a failed New", n)
	}
}
