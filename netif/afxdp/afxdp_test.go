package afxdp_test

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/afxdp"
	"github.com/skylane/skylane/packet"
)

// childEnv makes the test binary a child that holds an AF_XDP link on the
// interface it names until it is killed (TestCrashDetaches).
const childEnv = "SKYLANE_AFXDP_TEST_CHILD"

func TestMain(m *testing.M) {
	if ifname := os.Getenv(childEnv); ifname != "" {
		if err := runChild(ifname); err != nil {
			fmt.Fprintln(os.Stderr, "afxdp test child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runChild runs in the local namespace (started by ip netns exec): it
// opens a link, steers UDP port 7000 to it, says "ready", and holds the
// link until stdin closes or the parent kills it.
func runChild(ifname string) error {
	l, err := afxdp.Open(afxdp.Options{Interface: ifname})
	if err != nil {
		return err
	}
	if err := l.SteerFlow(packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(local4, 7000), netip.AddrPort{})); err != nil {
		return err
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return l.Close()
}

var (
	local4 = netip.MustParseAddr("198.18.0.1")
	peer4  = netip.MustParseAddr("198.18.0.2")
	ap     = netip.AddrPortFrom
)

const waitLimit = 5 * time.Second // bound on every wait for traffic

// openLink opens a link on v's local end inside its namespace and closes
// it, checking nothing is left attached, when the test ends.
func openLink(t *testing.T, v *nettest.Veth, o afxdp.Options) afxdp.Link {
	t.Helper()
	o.Interface = v.LocalName
	var l afxdp.Link
	err := v.Local.Do(func() (err error) {
		l, err = afxdp.Open(o)
		return err
	})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		requireNoXDP(t, v)
	})
	return l
}

// xdpAttached reports whether an XDP program is on v's local end.
func xdpAttached(t *testing.T, v *nettest.Veth) bool {
	t.Helper()
	nl, err := v.Local.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	lk, err := nl.LinkByName(v.LocalName)
	if err != nil {
		t.Fatal(err)
	}
	x := lk.Attrs().Xdp
	return x != nil && (x.Attached || x.ProgId != 0)
}

func requireNoXDP(t *testing.T, v *nettest.Veth) {
	t.Helper()
	if xdpAttached(t, v) {
		t.Errorf("an XDP program is still attached to %s", v.LocalName)
	}
}

// udpIn opens a kernel UDP socket in ns.
func udpIn(t *testing.T, ns *nettest.NS, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := ns.Do(func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		return err
	}); err != nil {
		t.Fatalf("listen %v in %s: %v", addr, ns.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func send(t *testing.T, c *net.UDPConn, to netip.AddrPort, payload string) {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort([]byte(payload), to); err != nil {
		t.Fatalf("send %q to %v: %v", payload, to, err)
	}
}

// recvAll reads datagrams from c until every payload in want arrived or
// waitLimit passes; it fails on an unexpected payload.
func recvAll(t *testing.T, c *net.UDPConn, want map[string]bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	buf := make([]byte, 2048)
	for len(want) > 0 {
		c.SetReadDeadline(deadline)
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("kernel socket %v: still waiting for %d datagrams: %v", c.LocalAddr(), len(want), err)
		}
		p := string(buf[:n])
		if !want[p] {
			t.Fatalf("kernel socket %v: unexpected datagram %q from %v", c.LocalAddr(), p, from)
		}
		delete(want, p)
	}
}

// udpFrame is a received frame's UDP view.
type udpFrame struct {
	dstMAC   net.HardwareAddr
	src, dst netip.AddrPort
	payload  string
}

func decodeUDP(b []byte) (udpFrame, bool) {
	p := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.Default)
	eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	u, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if eth == nil || ip == nil || u == nil {
		return udpFrame{}, false
	}
	s, _ := netip.AddrFromSlice(ip.SrcIP)
	d, _ := netip.AddrFromSlice(ip.DstIP)
	return udpFrame{eth.DstMAC, ap(s, uint16(u.SrcPort)), ap(d, uint16(u.DstPort)), string(u.Payload)}, true
}

// readLink reads frames from l until every payload in want arrived (each
// checked by check) or waitLimit passes. Frames that are not UDP (IPv6
// router solicitations and such would pass XDP anyway) are ignored; a UDP
// payload not in want fails the test.
func readLink(t *testing.T, l afxdp.Link, want map[string]bool, check func(udpFrame) error) {
	t.Helper()
	bufs := make([][]byte, l.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, netif.MaxFrameLen(l.MTU(), l.LinkType()))
	}
	sizes := make([]int, len(bufs))
	deadline := time.Now().Add(waitLimit)
	for len(want) > 0 {
		left := time.Until(deadline)
		if left <= 0 {
			t.Fatalf("link: still waiting for %d frames after %v", len(want), waitLimit)
		}
		if err := l.Wait(left); err != nil {
			t.Fatalf("wait: %v", err)
		}
		n, err := l.Read(bufs, sizes)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		for i := range n {
			f, ok := decodeUDP(bufs[i][:sizes[i]])
			if !ok {
				continue
			}
			if !want[f.payload] {
				t.Fatalf("link: unexpected frame %+v", f)
			}
			if err := check(f); err != nil {
				t.Fatalf("link: frame %+v: %v", f, err)
			}
			delete(want, f.payload)
		}
	}
}

// peerPing sends one ICMP echo request from the peer to addr and waits
// for the reply (the local kernel must answer it).
func peerPing(t *testing.T, v *nettest.Veth, addr netip.Addr) {
	t.Helper()
	var c net.PacketConn
	if err := v.Peer.Do(func() (err error) {
		c, err = net.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	}); err != nil {
		t.Fatalf("raw ICMP socket in peer: %v", err)
	}
	defer c.Close()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true},
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 0x5c1, Seq: 1},
		gopacket.Payload("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteTo(buf.Bytes(), &net.IPAddr{IP: addr.AsSlice()}); err != nil {
		t.Fatalf("send echo request: %v", err)
	}
	deadline := time.Now().Add(waitLimit)
	r := make([]byte, 1500)
	for {
		c.SetReadDeadline(deadline)
		n, from, err := c.ReadFrom(r)
		if err != nil {
			t.Fatalf("no echo reply from %v: %v", addr, err)
		}
		p := gopacket.NewPacket(r[:n], layers.LayerTypeICMPv4, gopacket.Default)
		if ic, ok := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4); ok &&
			ic.TypeCode.Type() == layers.ICMPv4TypeEchoReply && ic.Id == 0x5c1 && from.String() == addr.String() {
			return
		}
	}
}
