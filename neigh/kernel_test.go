package neigh_test

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/neigh"
	"github.com/skylane/skylane/netif/afpacket"
	"github.com/skylane/skylane/packet"
)

// node is a user-space host on the local end of a veth whose kernel has no
// address there: an AF_PACKET Link and a Resolver, driven by one goroutine
// the way the nexus would drive them (HandleFrame on every frame, Poll
// every pass, replies and Poll's frames written to the link). Frames the
// Resolver does not consume go to rx.
type node struct {
	v    *nettest.Veth
	l    *afpacket.Link
	r    *neigh.Resolver
	rx   chan []byte
	stop chan struct{}
	done chan struct{}
}

func newNode(t *testing.T) *node {
	t.Helper()
	nettest.RequirePriv(t)
	v := nettest.NewVeth(t, nettest.VethOptions{NoLocalAddr: true})
	var l *afpacket.Link
	if err := v.Local.Do(func() (err error) {
		l, err = afpacket.New(afpacket.Options{Interface: v.LocalName})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	r, err := neigh.New(neigh.Options{MAC: neigh.MAC(l.HardwareAddr()), Addrs: []netip.Addr{v.LocalAddr.Addr(), v.LocalAddr6.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	n := &node{v: v, l: l, r: r, rx: make(chan []byte, 256), stop: make(chan struct{}), done: make(chan struct{})}
	go n.run(t)
	t.Cleanup(func() { close(n.stop); <-n.done })
	return n
}

func (n *node) run(t *testing.T) {
	defer close(n.done)
	bufs, sizes := make([][]byte, 32), make([]int, 32)
	for i := range bufs {
		bufs[i] = make([]byte, n.l.MaxSuperPacketLen())
	}
	reply := make([]byte, neigh.NDPFrameLen)
	for {
		select {
		case <-n.stop:
			return
		default:
		}
		if err := n.l.Wait(10 * time.Millisecond); err != nil {
			t.Errorf("wait: %v", err)
			return
		}
		k, err := n.l.Read(bufs, sizes)
		if err != nil {
			t.Errorf("read: %v", err)
			return
		}
		for i := range k {
			f := bufs[i][:sizes[i]]
			m, consumed := n.r.HandleFrame(f, reply)
			if m > 0 {
				if _, err := n.l.Write([][]byte{reply[:m]}); err != nil {
					t.Errorf("write reply: %v", err)
				}
			}
			if !consumed {
				select {
				case n.rx <- bytes.Clone(f):
				default: // the test is not reading: drop
				}
			}
		}
		out := make([][]byte, 8)
		for i := range out {
			out[i] = make([]byte, 2048)
		}
		osz := make([]int, 8)
		if p := n.r.Poll(out, osz); p > 0 {
			frames := make([][]byte, p)
			for i := range p {
				frames[i] = out[i][:osz[i]]
			}
			if _, err := n.l.Write(frames); err != nil {
				t.Errorf("write: %v", err)
			}
		}
	}
}

// ipUDP builds an IP/UDP packet (no link header) with gopacket.
func ipUDP(t *testing.T, src, dst netip.AddrPort, payload []byte) []byte {
	t.Helper()
	udp := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	var ip gopacket.SerializableLayer
	if src.Addr().Is4() {
		x := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		_ = udp.SetNetworkLayerForChecksum(x)
		ip = x
	} else {
		x := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		_ = udp.SetNetworkLayerForChecksum(x)
		ip = x
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		ip, udp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// peerSocket opens a kernel UDP socket at the peer's address.
func peerSocket(t *testing.T, n *node, v6 bool) (c *net.UDPConn, local, peer netip.Addr) {
	t.Helper()
	v := n.v
	local, peer = v.LocalAddr.Addr(), v.PeerAddr.Addr()
	if v6 {
		local, peer = v.LocalAddr6.Addr(), v.PeerAddr6.Addr()
	}
	if err := v.Peer.Do(func() (err error) {
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(peer, 0)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, local, peer
}

// TestKernelResolvesUs: with no kernel address on the local end, the
// peer's kernel resolves the user-space address through the Resolver's
// answer (ARP reply, NA) and its UDP datagram reaches the Link.
func TestKernelResolvesUs(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "ipv4", true: "ipv6"}[v6], func(t *testing.T) {
			n := newNode(t)
			c, local, _ := peerSocket(t, n, v6)
			hello := []byte("to the user-space address")
			if _, err := c.WriteToUDPAddrPort(hello, netip.AddrPortFrom(local, 7000)); err != nil {
				t.Fatal(err)
			}
			deadline := time.After(10 * time.Second)
			for {
				select {
				case f := <-n.rx:
					var p packet.Parsed
					if packet.Parse(f, packet.Ethernet, &p) != nil || p.Proto != packet.ProtoUDP || p.DstPort != 7000 {
						continue
					}
					if !bytes.Equal(f[0:6], n.l.HardwareAddr()) || p.Dst() != local ||
						!bytes.Equal(f[p.PayloadOff:p.PayloadOff+p.PayloadLen], hello) {
						t.Fatalf("frame % x", f)
					}
					if s := n.r.Stats(); s.RepliesSent == 0 {
						t.Fatalf("datagram arrived but the Resolver answered nothing: %+v", s)
					}
					return
				case <-deadline:
					t.Fatalf("no datagram from the peer within 10 s (resolver %+v)", n.r.Stats())
				}
			}
		})
	}
}

// TestWeResolveKernel: the Resolver resolves the peer's kernel by
// soliciting it (broadcast ARP, multicast NS), then releases the packet it
// held for it, which the peer's UDP socket receives.
func TestWeResolveKernel(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "ipv4", true: "ipv6"}[v6], func(t *testing.T) {
			n := newNode(t)
			c, local, peer := peerSocket(t, n, v6)
			cport := uint16(c.LocalAddr().(*net.UDPAddr).Port)
			msg := []byte("held until resolved")
			if !n.r.Hold(peer, ipUDP(t, netip.AddrPortFrom(local, 7001), netip.AddrPortFrom(peer, cport), msg)) {
				t.Fatal("Hold refused")
			}
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, 100)
			k, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil || !bytes.Equal(buf[:k], msg) || from.Addr().Unmap() != local {
				t.Fatalf("peer got %q from %v: %v (resolver %+v)", buf[:k], from, err, n.r.Stats())
			}
			mac, ok := n.r.Resolve(peer)
			if !ok || !bytes.Equal(mac[:], n.v.PeerMAC) {
				t.Fatalf("resolved %v to %x, want %v", peer, mac, n.v.PeerMAC)
			}
			if s := n.r.Stats(); s.SolicitsSent == 0 || s.Resolved != 1 || s.PendingSent != 1 {
				t.Fatalf("stats %+v", s)
			}
		})
	}
}
