package drivers

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/packet"
)

// TestReserveHoldsPorts: while a listener flow's port is reserved no
// kernel socket binds it (TCP and UDP, wildcard and specific, IPv4 and
// IPv6, with SO_REUSEADDR and SO_REUSEPORT), a port a kernel socket holds
// cannot be reserved, and closing the reservation gives the port back.
func TestReserveHoldsPorts(t *testing.T) {
	v, r := newReserverWorld(t)
	l4, l6 := v.LocalAddr.Addr(), v.LocalAddr6.Addr()
	any4, any6 := netip.IPv4Unspecified(), netip.IPv6Unspecified()
	for i, tc := range []struct {
		name  string
		proto uint8
		local netip.Addr // the flow's local address: unspecified for a listener on any address
		binds []string   // kernel binds that must fail meanwhile (network addr)
	}{
		{"tcp4 any", packet.ProtoTCP, any4, []string{"tcp4 0.0.0.0", "tcp4 198.18.0.1", "tcp [::]", "tcp4 127.0.0.1"}},
		{"tcp4 addr", packet.ProtoTCP, l4, []string{"tcp4 0.0.0.0", "tcp4 198.18.0.1", "tcp [::]"}},
		{"udp4 any", packet.ProtoUDP, any4, []string{"udp4 0.0.0.0", "udp4 198.18.0.1", "udp [::]"}},
		{"udp4 addr", packet.ProtoUDP, l4, []string{"udp4 0.0.0.0", "udp4 198.18.0.1"}},
		{"tcp6 any", packet.ProtoTCP, any6, []string{"tcp6 [::]", "tcp6 [2001:2::1]", "tcp [::]"}},
		{"tcp6 addr", packet.ProtoTCP, l6, []string{"tcp6 [::]", "tcp6 [2001:2::1]"}},
		{"udp6 any", packet.ProtoUDP, any6, []string{"udp6 [::]", "udp6 [2001:2::1]"}},
		{"udp6 addr", packet.ProtoUDP, l6, []string{"udp6 [::]", "udp6 [2001:2::1]"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := uint16(20000 + i)
			key := packet.MakeKey(tc.proto, netip.AddrPortFrom(tc.local, port), netip.AddrPort{})
			res, err := r.Reserve(key)
			if err != nil {
				t.Fatalf("Reserve(%v): %v", key, err)
			}
			for _, b := range tc.binds {
				var network, host string
				fmt.Sscan(b, &network, &host)
				addr := fmt.Sprintf("%s:%d", host, port)
				for _, reuse := range []bool{false, true} {
					if err := nettest.KernelBind(v.Local, network, addr, reuse); !errors.Is(err, unix.EADDRINUSE) {
						t.Errorf("kernel bind %s %s (reuse %v) while reserved: %v, want EADDRINUSE", network, addr, reuse, err)
					}
				}
			}
			// A second reservation of the same port fails as a kernel
			// socket would.
			if res2, err := r.Reserve(key); !errors.Is(err, unix.EADDRINUSE) {
				t.Errorf("second Reserve: %v, want EADDRINUSE", err)
				if res2 != nil {
					res2.Close()
				}
			}
			if err := res.Close(); err != nil {
				t.Fatal(err)
			}
			for _, b := range tc.binds {
				var network, host string
				fmt.Sscan(b, &network, &host)
				if err := nettest.KernelBind(v.Local, network, fmt.Sprintf("%s:%d", host, port), false); err != nil {
					t.Errorf("kernel bind %s %s after the reservation closed: %v", network, host, err)
				}
			}
		})
	}

	t.Run("address added later", func(t *testing.T) {
		// The reservation holds an address the kernel does not have
		// yet; once it has it, its sockets still cannot bind the port.
		late := netip.MustParseAddr("198.18.0.9")
		res, err := r.Reserve(packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(late, 20101), netip.AddrPort{}))
		if err != nil {
			t.Fatal(err)
		}
		defer res.Close()
		nl, err := v.Local.Netlink()
		if err != nil {
			t.Fatal(err)
		}
		defer nl.Close()
		l, err := nl.LinkByName(v.LocalName)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := netlink.ParseAddr("198.18.0.9/32")
		if err := nl.AddrAdd(l, a); err != nil {
			t.Fatal(err)
		}
		if err := nettest.KernelBind(v.Local, "tcp4", "198.18.0.9:20101", true); !errors.Is(err, unix.EADDRINUSE) {
			t.Errorf("kernel bind of the address added after the reservation: %v, want EADDRINUSE", err)
		}
	})

	t.Run("kernel holds it", func(t *testing.T) {
		var ln net.Listener
		if err := v.Local.Do(func() (err error) { ln, err = net.Listen("tcp4", "0.0.0.0:20100"); return err }); err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		key := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(l4, 20100), netip.AddrPort{})
		if res, err := r.Reserve(key); !errors.Is(err, unix.EADDRINUSE) {
			t.Errorf("Reserve of a port a kernel listener holds: %v, want EADDRINUSE", err)
			if res != nil {
				res.Close()
			}
		}
	})
}

// TestReserveHostListener: a TCP reservation's listener accepts the
// connections of this host's processes to the interface's address, and
// drops a remote host's SYN (it times out, no RST, no SYN-ACK).
func TestReserveHostListener(t *testing.T) {
	v, r := newReserverWorld(t)
	for _, local := range []netip.Addr{netip.IPv4Unspecified(), v.LocalAddr6.Addr()} {
		key := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(local, 20200), netip.AddrPort{})
		res, err := r.Reserve(key)
		if err != nil {
			t.Fatal(err)
		}
		f, err := res.Listener()
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		dst := netip.AddrPortFrom(v.LocalAddr.Addr(), 20200)
		if local.Is6() {
			dst = netip.AddrPortFrom(local, 20200)
		}
		accepted := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err == nil {
				_, err = c.Write([]byte("hi"))
				c.Close()
			}
			accepted <- err
		}()
		// From this host: accepted.
		var got []byte
		err = v.Local.Do(func() error {
			c, err := net.DialTimeout("tcp", dst.String(), 2*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * time.Second))
			got, err = io.ReadAll(c)
			return err
		})
		if err != nil || string(got) != "hi" {
			t.Fatalf("local dial %v: %q, %v", dst, got, err)
		}
		if err := <-accepted; err != nil {
			t.Fatal(err)
		}
		// From the peer: the SYN is dropped (a timeout, not a refusal).
		err = v.Peer.Do(func() error {
			c, err := net.DialTimeout("tcp", dst.String(), 300*time.Millisecond)
			if err == nil {
				c.Close()
			}
			return err
		})
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("remote dial %v: %v, want a timeout (the filter drops remote SYNs)", dst, err)
		}
		// Closing the reservation stops the duplicate's Accept too.
		done := make(chan error, 1)
		go func() { _, err := ln.Accept(); done <- err }()
		res.Close()
		select {
		case err := <-done:
			if err == nil {
				t.Error("Accept on the duplicate succeeded after the reservation closed")
			}
		case <-time.After(5 * time.Second):
			t.Error("Accept on the duplicate still blocked 5 s after the reservation closed")
		}
		ln.Close()
	}
}

// TestReserveHostUDP: a UDP reservation's host socket receives this
// host's datagrams to the interface's address and answers them, while a
// remote host's datagram never queues on it.
func TestReserveHostUDP(t *testing.T) {
	v, r := newReserverWorld(t)
	for _, local := range []netip.Addr{netip.IPv4Unspecified(), v.LocalAddr6.Addr()} {
		key := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(local, 20300), netip.AddrPort{})
		res, err := r.Reserve(key)
		if err != nil {
			t.Fatal(err)
		}
		f, err := res.Listener()
		if err != nil || f == nil {
			t.Fatalf("host socket of %v: %v, %v", key, f, err)
		}
		pc, err := net.FilePacketConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		dst := netip.AddrPortFrom(v.LocalAddr.Addr(), 20300)
		marker := netip.AddrPortFrom(v.LocalAddr.Addr(), 20301)
		if local.Is6() {
			dst = netip.AddrPortFrom(local, 20300)
			marker = netip.AddrPortFrom(local, 20301)
		}
		// A plain kernel socket beside it: the peer's marker datagram,
		// sent after the one to the reservation on the same path, shows
		// that one has arrived (and was dropped) by the time it is read.
		var mc net.PacketConn
		if err := v.Local.Do(func() (err error) { mc, err = net.ListenPacket("udp", marker.String()); return err }); err != nil {
			t.Fatal(err)
		}
		err = v.Peer.Do(func() error {
			c, err := net.ListenPacket("udp", ":0")
			if err != nil {
				return err
			}
			defer c.Close()
			if _, err := c.WriteTo([]byte("remote"), net.UDPAddrFromAddrPort(dst)); err != nil {
				return err
			}
			_, err = c.WriteTo([]byte("marker"), net.UDPAddrFromAddrPort(marker))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		mc.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64)
		if n, _, err := mc.ReadFrom(buf); err != nil || string(buf[:n]) != "marker" {
			t.Fatalf("marker at the kernel's own socket: %q, %v", buf[:n], err)
		}
		mc.Close()
		// From this host: received, and answered through the host socket.
		var got string
		err = v.Local.Do(func() error {
			c, err := net.ListenPacket("udp", ":0")
			if err != nil {
				return err
			}
			defer c.Close()
			if _, err := c.WriteTo([]byte("local"), net.UDPAddrFromAddrPort(dst)); err != nil {
				return err
			}
			pc.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return fmt.Errorf("host socket read: %w", err)
			}
			if string(buf[:n]) != "local" {
				return fmt.Errorf("host socket read %q first, want this host's %q (the filter let a remote datagram in)", buf[:n], "local")
			}
			if _, err := pc.WriteTo([]byte("answer"), from); err != nil {
				return err
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, _, err = c.ReadFrom(buf)
			got = string(buf[:n])
			return err
		})
		if err != nil || got != "answer" {
			t.Fatalf("local exchange with %v: %q, %v", dst, got, err)
		}
		res.Close()
		pc.Close()
	}
}

// newReserverWorld makes a veth pair and a Reserver in its local
// namespace, closed when the test ends.
func newReserverWorld(t *testing.T) (*nettest.Veth, *Reserver) {
	t.Helper()
	nettest.RequirePriv(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	var r *Reserver
	if err := v.Local.Do(func() (err error) { r, err = NewReserver(v.LocalIndex); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return v, r
}
