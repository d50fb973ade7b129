package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"github.com/skylane/skylane/client"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif/drivers"
)

// TestCoexistence: while the user-space stack owns TCP 8080 and UDP 5353 on
// the interface, kernel servers on other ports of the same interface and
// addresses (TCP 9090, UDP 5354) keep answering the peer, and the kernel
// never answers a packet of a user-space flow (it sends no reset: over
// AF_PACKET that is the TC program's work, over AF_XDP the XDP
// program's). On TUN the kernel and the user-space stack have addresses of
// their own, so this only checks that both work side by side.
func TestCoexistence(t *testing.T) {
	for _, d := range allDrivers {
		t.Run(d, func(t *testing.T) {
			w := newWorld(t, d)
			ln, err := w.st.Listen("tcp", fmt.Sprintf(":%d", userPort))
			if err != nil {
				t.Fatal(err)
			}
			serveHTTP(t, ln, "user-space")
			pc, err := w.st.ListenPacket("udp", fmt.Sprintf(":%d", userUDP))
			if err != nil {
				t.Fatal(err)
			}
			udpEcho(t, pc)

			// Kernel servers in the local namespace, on every address.
			var kln net.Listener
			var kpc net.PacketConn
			err = w.local.Do(func() (err error) {
				if kln, err = net.Listen("tcp", fmt.Sprintf(":%d", kernelPort)); err != nil {
					return err
				}
				kpc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", kernelUDP))
				return err
			})
			if err != nil {
				t.Fatalf("kernel servers: %v", err)
			}
			serveHTTP(t, kln, "kernel")
			udpEcho(t, kpc)

			// The user-space stack may not take a port a kernel socket
			// holds: the steering would take that socket's packets.
			if _, err := w.st.Listen("tcp", fmt.Sprintf(":%d", kernelPort)); err == nil {
				t.Errorf("user-space listen on the kernel server's port %d succeeded", kernelPort)
			} else {
				t.Logf("listen on the kernel's port refused: %v", err)
			}
			if _, err := w.st.ListenPacket("udp", fmt.Sprintf(":%d", kernelUDP)); err == nil {
				t.Errorf("user-space UDP listen on the kernel's port %d succeeded", kernelUDP)
			}

			rsts := kernelResets(t, w.local)
			for _, a := range []netip.Addr{w.user4, w.user6} {
				kernelAddr := a
				if d == drivers.TUN {
					// The kernel's own addresses on the device.
					kernelAddr = map[bool]netip.Addr{true: tunKernel4.Addr(), false: tunKernel6.Addr()}[a.Is4()]
				}
				for round := range 3 { // interleaved, so both are live at once
					if out := curl(t, w.peer, "-g", url("http", a, userPort)); !strings.HasPrefix(out, "user-space") {
						t.Fatalf("round %d: user-space server: %q", round, out)
					}
					if out := curl(t, w.peer, "-g", url("http", kernelAddr, kernelPort)); !strings.HasPrefix(out, "kernel") {
						t.Fatalf("round %d: kernel server: %q", round, out)
					}
					udpPing(t, w.peer, netip.AddrPortFrom(a, userUDP))
					udpPing(t, w.peer, netip.AddrPortFrom(kernelAddr, kernelUDP))
				}
			}
			if d != drivers.TUN {
				if got := kernelResets(t, w.local); got != rsts {
					t.Errorf("the local kernel sent %d TCP resets: it answered user-space flows", got-rsts)
				}
			}
		})
	}
}

// TestDialKernel: a user-space client reaches kernel servers in the peer
// namespace, TCP (HTTP) and UDP, over IPv4 and IPv6.
func TestDialKernel(t *testing.T) {
	for _, d := range allDrivers {
		t.Run(d, func(t *testing.T) {
			w := newWorld(t, d)
			// A stack that leaves its checksums to the nexus.
			st := w.newStackWith(t, client.Options{Name: "offload", ChecksumOffload: true})
			var kln net.Listener
			var kpc net.PacketConn
			err := w.peer.Do(func() (err error) {
				if kln, err = net.Listen("tcp", fmt.Sprintf(":%d", peerPort)); err != nil {
					return err
				}
				kpc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", peerPort))
				return err
			})
			if err != nil {
				t.Fatalf("kernel servers in the peer: %v", err)
			}
			serveHTTP(t, kln, "kernel peer")
			udpEcho(t, kpc)

			tr := &http.Transport{DialContext: st.DialContext, DisableKeepAlives: true}
			defer tr.CloseIdleConnections()
			hc := &http.Client{Transport: tr, Timeout: opTimeout}
			for _, a := range []netip.Addr{w.peer4, w.peer6} {
				resp, err := hc.Get(url("http", a, peerPort))
				if err != nil {
					t.Fatalf("GET %s: %v", url("http", a, peerPort), err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || !strings.HasPrefix(string(body), "kernel peer") {
					t.Fatalf("GET %s: %q, %v", url("http", a, peerPort), body, err)
				}
				t.Logf("GET %s: %s", url("http", a, peerPort), strings.TrimSpace(string(body)))

				c, err := st.Dial("udp", netip.AddrPortFrom(a, peerPort).String())
				if err != nil {
					t.Fatal(err)
				}
				c.SetDeadline(time.Now().Add(opTimeout))
				msg := "ping from user space over " + d
				var got string
				for try := 0; try < 5 && got == ""; try++ { // UDP: the first may race neighbour resolution
					if _, err := c.Write([]byte(msg)); err != nil {
						t.Fatal(err)
					}
					c.SetReadDeadline(time.Now().Add(time.Second))
					buf := make([]byte, 256)
					n, err := c.Read(buf)
					if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
						t.Fatal(err)
					}
					got = string(buf[:n])
				}
				c.Close()
				if got != msg {
					t.Fatalf("UDP echo from %v: %q", a, got)
				}
			}
			// The stack left its TCP and UDP checksums to the wire
			// (channel.FlagCsumPartial) and the kernel, which
			// verifies them, answered: the nexus completed them.
			ns, err := w.nx.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if ns.Switch.TxCsumCompleted == 0 {
				t.Errorf("no checksum completed by the nexus (TxCsumCompleted 0): the stack computed them itself?")
			}
			t.Logf("checksums completed by the nexus: %d", ns.Switch.TxCsumCompleted)
		})
	}
}

// udpEcho echoes every datagram, up to 64 KiB, on pc until the test ends.
func udpEcho(t *testing.T, pc net.PacketConn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		echoUntilClosed(pc)
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
}

// echoUntilClosed echoes every datagram, up to 64 KiB, on pc until it
// is closed.
func echoUntilClosed(pc net.PacketConn) {
	buf := make([]byte, 65536)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		pc.WriteTo(buf[:n], from)
	}
}

// udpPing sends a small datagram to to from a kernel socket in ns and
// waits for its echo (bigPing).
func udpPing(t *testing.T, ns *nettest.NS, to netip.AddrPort) {
	t.Helper()
	bigPing(t, ns, to, 64)
}

// kernelResets returns the TCP resets the kernel of ns has sent
// (Tcp OutRsts in /proc/net/snmp).
func kernelResets(t *testing.T, ns *nettest.NS) uint64 {
	t.Helper()
	return kernelTCP(t, ns, "OutRsts")
}

// kernelTCP returns the counter stat of the Tcp line of /proc/net/snmp
// in ns.
func kernelTCP(t *testing.T, ns *nettest.NS, stat string) uint64 {
	t.Helper()
	var n uint64
	err := ns.Do(func() error {
		f, err := os.Open("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		defer f.Close()
		var names []string
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) == 0 || fields[0] != "Tcp:" {
				continue
			}
			if names == nil {
				names = fields
				continue
			}
			for i, name := range names {
				if name == stat && i < len(fields) {
					n, err = strconv.ParseUint(fields[i], 10, 64)
					return err
				}
			}
		}
		return fmt.Errorf("no Tcp %s in /proc/net/snmp", stat)
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
