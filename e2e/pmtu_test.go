package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/skylane/skylane/internal/nettest"
)

// Addresses of the far subnet behind the router (the peer namespace).
var (
	router4, far4 = netip.MustParsePrefix("198.18.2.1/24"), netip.MustParsePrefix("198.18.2.2/24")
	router6, far6 = netip.MustParsePrefix("2001:2:2::1/64"), netip.MustParsePrefix("2001:2:2::2/64")
)

// farMTU is the MTU of the router's far interface: the path's bottleneck,
// which neither end's own interface shows.
const farMTU = 1280

// TestPathMTU: the peer namespace routes to a far subnet through an
// interface of MTU 1280 (the far host's own is 1500, so it announces an MSS
// the path cannot carry). A user-space client uploads 1 MiB to a kernel
// server on the far host over IPv4 and IPv6: its first full-size segments
// are refused by the router, whose ICMP "fragmentation needed" / ICMPv6
// "packet too big" the nexus steers to the app by the flow it quotes, and
// the transfer completes at the smaller size. (The nexus finds the
// router as the next hop in the local kernel's routes.)
func TestPathMTU(t *testing.T) {
	for _, d := range ethDrivers {
		t.Run(d, func(t *testing.T) {
			w := newWorld(t, d)
			far := farSubnet(t, w)
			var ln net.Listener
			if err := far.Do(func() (err error) {
				ln, err = net.Listen("tcp", fmt.Sprintf(":%d", peerPort))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() { // each connection: read to EOF, answer the SHA-256
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() {
						defer c.Close()
						c.SetDeadline(time.Now().Add(opTimeout))
						h := sha256.New()
						io.Copy(h, c)
						fmt.Fprintf(c, "%x", h.Sum(nil))
					}()
				}
			}()
			before, err := w.nx.Stats()
			if err != nil {
				t.Fatal(err)
			}
			msg := []byte(strings.Repeat("path mtu discovery ", 1<<20/19))
			want := fmt.Sprintf("%x", sha256.Sum256(msg))
			for _, a := range []netip.Addr{far4.Addr(), far6.Addr()} {
				ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
				c, err := w.st.DialContext(ctx, "tcp", netip.AddrPortFrom(a, peerPort).String())
				cancel()
				if err != nil {
					t.Fatalf("dial %v: %v", a, err)
				}
				c.SetDeadline(time.Now().Add(opTimeout))
				start := time.Now()
				if _, err := c.Write(msg); err != nil {
					t.Fatalf("upload to %v: %v", a, err)
				}
				c.(interface{ CloseWrite() error }).CloseWrite()
				got, err := io.ReadAll(c)
				c.Close()
				if err != nil || string(got) != want {
					t.Fatalf("upload to %v: digest %q, %v; want %s", a, got, err, want)
				}
				t.Logf("%v: 1 MiB through the %d-byte hop in %v", a, farMTU, time.Since(start).Round(time.Millisecond))
			}
			after, err := w.nx.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if n := after.Switch.ICMPErrors - before.Switch.ICMPErrors; n < 2 {
				t.Errorf("the nexus steered %d ICMP errors to the app, want at least one per family", n)
			}
		})
	}
}

// farSubnet makes the world's peer a router to a new namespace, returned,
// over a veth whose router end has MTU farMTU: forwarding on, far4/far6
// on the far end with default routes through router4/router6, and routes
// to the far subnet through the peer in the local namespace (the nexus
// follows the kernel's routes). Everything goes with the namespaces.
func farSubnet(t *testing.T, w *world) *nettest.NS {
	t.Helper()
	router := w.peer
	far := nettest.NewNS(t)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	run := func(ns *nettest.NS, args ...string) {
		t.Helper()
		if out, err := ns.Command(ctx, args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s in %s: %v: %s", strings.Join(args, " "), ns.Name, err, out)
		}
	}
	rIf, fIf := uniqueName("rtr"), uniqueName("far")
	run(router, "ip", "link", "add", rIf, "mtu", fmt.Sprint(farMTU), "type", "veth", "peer", "name", fIf, "netns", far.Name)
	run(router, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	run(router, "ip", "addr", "add", router4.String(), "dev", rIf)
	run(router, "ip", "addr", "add", router6.String(), "dev", rIf, "nodad")
	run(router, "ip", "link", "set", rIf, "up")
	run(far, "ip", "addr", "add", far4.String(), "dev", fIf)
	run(far, "ip", "addr", "add", far6.String(), "dev", fIf, "nodad")
	run(far, "ip", "link", "set", fIf, "up")
	run(far, "ip", "link", "set", "lo", "up")
	run(far, "ip", "route", "add", "default", "via", router4.Addr().String())
	run(far, "ip", "-6", "route", "add", "default", "via", router6.Addr().String())
	run(w.local, "ip", "route", "add", router4.Masked().String(), "via", w.peer4.String())
	run(w.local, "ip", "-6", "route", "add", router6.Masked().String(), "via", w.peer6.String())
	return far
}
