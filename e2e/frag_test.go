package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif/drivers"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/reassembly"
)

// fragTimeout is the reassembly timeout of the fragment tests' nexus: short,
// so an incomplete set is seen to time out within the test.
const fragTimeout = time.Second

// TestFragments: datagrams of 4 KiB to 60 KiB from the peer's kernel, which
// sends them in fragments, reach a user-space UDP echo (reassembled in the
// nexus), and its echoes, fragmented by netstack, reach the kernel client
// whole, over IPv4 and IPv6; the kernel's own UDP socket on another port
// of the same addresses still gets its fragmented datagrams (not taken by
// the steering, nor by the nexus), and its pings to those addresses.
func TestFragments(t *testing.T) {
	for _, d := range allDrivers {
		t.Run(d, func(t *testing.T) {
			w := newWorldWith(t, d, flowswitch.Options{Reassembly: &reassembly.Options{Timeout: fragTimeout}})
			pc, err := w.st.ListenPacket("udp", fmt.Sprintf(":%d", userUDP))
			if err != nil {
				t.Fatal(err)
			}
			udpEcho(t, pc)
			var kpc net.PacketConn
			if err := w.local.Do(func() (err error) {
				kpc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", kernelUDP))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			udpEcho(t, kpc)
			sizes := []int{4096, 16384, 32768, 61440}
			for _, a := range []netip.Addr{w.user4, w.user6} {
				for _, n := range sizes {
					bigPing(t, w.peer, netip.AddrPortFrom(a, userUDP), n)
				}
				kernelAddr := a
				if d == drivers.TUN {
					kernelAddr = map[bool]netip.Addr{true: tunKernel4.Addr(), false: tunKernel6.Addr()}[a.Is4()]
				}
				for _, n := range []int{4096, 61440} {
					bigPing(t, w.peer, netip.AddrPortFrom(kernelAddr, kernelUDP), n)
				}
			}
			if d != drivers.TUN {
				// Echo requests to the interface's addresses stay the
				// kernel's: it answers them (the nexus is not asked to).
				nettest.RequireCommand(t, "ping")
				for _, a := range []netip.Addr{w.user4, w.user6} {
					ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
					out, err := w.peer.Command(ctx, "ping", "-c", "1", "-W", "2", a.String()).CombinedOutput()
					cancel()
					if err != nil {
						t.Fatalf("ping %v: %v: %s", a, err, out)
					}
				}
			}
			st, err := w.nx.Stats()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("reassembled %d datagrams; reassembler %+v", st.Switch.Reassembled, st.Switch.Reassembly)
			if st.Switch.Answers != (flowswitch.AnswerStats{}) && d != drivers.TUN {
				t.Errorf("the nexus answered as a host on %s, where the kernel owns the addresses: %+v", d, st.Switch.Answers)
			}
			if min := uint64(2 * len(sizes)); st.Switch.Reassembled < min {
				t.Errorf("the nexus delivered %d reassembled datagrams, want at least %d", st.Switch.Reassembled, min)
			}
		})
	}
}

// TestHostileFragments sends, with scapy from the peer, fragment sets the
// nexus must drop: overlapping, incomplete (timed out), and reaching past
// 65535 bytes, to the user-space UDP echo over IPv4 and IPv6; each is
// counted under its own name and the echo keeps answering. A SYN cut in
// 8-byte fragments to the user-space TCP port is answered by the
// user-space stack (a SYN-ACK), never by the kernel (no reset).
func TestHostileFragments(t *testing.T) {
	for _, d := range allDrivers {
		t.Run(d, func(t *testing.T) {
			python := scapyPython(t)
			w := newWorldWith(t, d, flowswitch.Options{Reassembly: &reassembly.Options{Timeout: fragTimeout}})
			pc, err := w.st.ListenPacket("udp", fmt.Sprintf(":%d", userUDP))
			if err != nil {
				t.Fatal(err)
			}
			udpEcho(t, pc)
			ln, err := w.st.Listen("tcp", fmt.Sprintf(":%d", userPort))
			if err != nil {
				t.Fatal(err)
			}
			serveHTTP(t, ln, "user-space")
			stats := func() flowswitch.Stats {
				st, err := w.nx.Stats()
				if err != nil {
					t.Fatal(err)
				}
				return st.Switch
			}
			for _, a := range []netip.Addr{w.user4, w.user6} {
				bigPing(t, w.peer, netip.AddrPortFrom(a, userUDP), 4096) // neighbours resolved
				for _, c := range []struct {
					kind    string
					counter func(flowswitch.Stats) uint64
				}{
					{"overlap", func(s flowswitch.Stats) uint64 { return s.Reassembly.Overlaps }},
					{"incomplete", func(s flowswitch.Stats) uint64 { return s.Reassembly.Timeouts }},
					{"oversize", func(s flowswitch.Stats) uint64 { return s.ParseDrops[packet.ReasonBadFragment] }},
				} {
					before := c.counter(stats())
					scapy(t, python, w.peer, w.capIf, c.kind, a, userUDP)
					deadline := time.Now().Add(fragTimeout + opTimeout/4)
					for c.counter(stats()) == before && time.Now().Before(deadline) {
						time.Sleep(50 * time.Millisecond) // the nexus's timer and datapath run on their own
					}
					if got := c.counter(stats()); got == before {
						t.Errorf("%v: %s set not counted (reassembler %+v)", a, c.kind, stats().Reassembly)
					}
					bigPing(t, w.peer, netip.AddrPortFrom(a, userUDP), 16384)
				}
			}
			if d == drivers.TUN {
				return // the kernel owns no address of the user-space stack there
			}
			rsts := kernelResets(t, w.local)
			before := stats()
			if out := scapy(t, python, w.peer, w.capIf, "tinysyn", w.user4, userPort); out != "synack" {
				after := stats()
				t.Errorf("fragmented SYN to the user-space port: %q, want a SYN-ACK (nexus: %d datagrams reassembled, %d packets sent meanwhile)",
					out, after.Reassembled-before.Reassembled, after.TxPackets-before.TxPackets)
			}
			if got := kernelResets(t, w.local); got != rsts {
				t.Errorf("the local kernel sent %d resets to a fragmented SYN of a user-space port", got-rsts)
			}
		})
	}
}

// bigPing sends a datagram of size bytes to to from a kernel socket in ns
// and waits for its echo, whole and equal, retrying a few times.
func bigPing(t *testing.T, ns *nettest.NS, to netip.AddrPort, size int) {
	t.Helper()
	err := ns.Do(func() error {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
		if err != nil {
			return err
		}
		defer c.Close()
		msg := make([]byte, size)
		for i := range msg {
			msg[i] = byte(i*7 + size)
		}
		buf := make([]byte, 65536)
		for try := 0; try < 5; try++ {
			if _, err := c.Write(msg); err != nil {
				return err
			}
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, err := c.Read(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			if err != nil {
				return err
			}
			if !bytes.Equal(buf[:n], msg) {
				return fmt.Errorf("echo of %d bytes differs (%d bytes)", size, n)
			}
			return nil
		}
		return errors.New("no echo after 5 tries")
	})
	if err != nil {
		t.Fatalf("UDP %d bytes to %v from %s: %v", size, to, ns.Name, err)
	}
}

// scapyFrags is the peer's sender of hostile fragment sets: kind, the
// destination address and port, the interface toward it. It prints what it saw ("synack" or
// "none" for tinysyn, "sent" otherwise).
const scapyFrags = `
import sys, time
from scapy.all import IP, IPv6, UDP, TCP, IPv6ExtHdrFragment, Raw, send, fragment, AsyncSniffer, conf
conf.verb = 0
kind, dst, port, iface = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
v6 = ':' in dst
ident = int(time.time() * 1000) & 0xffff
def l3():
    return IPv6(dst=dst) if v6 else IP(dst=dst)
# A UDP datagram of 72 bytes (header and 64 of data), its checksum right.
whole = bytes(l3() / UDP(sport=40000, dport=port) / Raw(b'F' * 64))
udp = whole[40:] if v6 else whole[20:]
def frag(off, data, more):
    if v6:
        return IPv6(dst=dst, nh=44) / IPv6ExtHdrFragment(nh=17, id=ident, offset=off // 8, m=int(more)) / Raw(data)
    return IP(dst=dst, id=ident, proto=17, flags='MF' if more else 0, frag=off // 8) / Raw(data)
if kind == 'overlap':      # bytes 16..32 twice
    send([frag(0, udp[:32], True), frag(16, udp[16:48], True), frag(48, udp[48:], False)])
elif kind == 'incomplete': # 32..48 never comes
    send([frag(0, udp[:32], True), frag(48, udp[48:], False)])
elif kind == 'oversize':   # the last fragment ends past 65535
    send([frag(0, udp[:32], True), frag(65528, b'O' * 64, False)])
elif kind == 'tinysyn':
    syn = IP(dst=dst) / TCP(sport=40001, dport=port, flags='S', seq=1000, options=[('MSS', 1460)])
    sn = AsyncSniffer(lfilter=lambda p: TCP in p and p[TCP].sport == port and p[TCP].dport == 40001, count=1, timeout=5, iface=iface)
    sn.start()
    time.sleep(0.5)
    send(fragment(syn, fragsize=8))
    sn.join()
    r = sn.results
    print('synack' if r and int(r[0][TCP].flags) & 0x12 == 0x12 else 'none')
    sys.exit(0)
print('sent')
`

// scapy runs scapyFrags with python (scapyPython) in ns and returns what it printed, trimmed.
func scapy(t *testing.T, python string, ns *nettest.NS, iface, kind string, dst netip.Addr, port int) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	out, err := ns.Command(ctx, python, "-c", scapyFrags, kind, dst.String(), fmt.Sprint(port), iface).CombinedOutput()
	if err != nil {
		t.Fatalf("scapy %s to %v: %v: %s", kind, dst, err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}

// TestTUNAnswersAsHost: on TUN, where the user-space addresses belong to
// the nexus alone, the kernel's ping gets echo replies, its TCP connect to
// a closed port is refused at once (a RST), and its UDP to a closed port
// gets a port unreachable (ECONNREFUSED on the connected socket), over
// IPv4 and IPv6, as from a kernel host; an open port still works.
func TestTUNAnswersAsHost(t *testing.T) {
	w := newWorld(t, drivers.TUN)
	nettest.RequireCommand(t, "ping")
	ln, err := w.st.Listen("tcp", fmt.Sprintf(":%d", userPort))
	if err != nil {
		t.Fatal(err)
	}
	serveHTTP(t, ln, "user-space")
	for _, a := range []netip.Addr{w.user4, w.user6} {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		out, err := w.peer.Command(ctx, "ping", "-c", "3", "-i", "0.2", "-W", "2", a.String()).CombinedOutput()
		cancel()
		if err != nil || !strings.Contains(string(out), "3 received") {
			t.Fatalf("ping %v: %v: %s", a, err, out)
		}
		err = w.peer.Do(func() error {
			start := time.Now()
			c, err := net.DialTimeout("tcp", netip.AddrPortFrom(a, userPort+1).String(), opTimeout)
			if err == nil {
				c.Close()
				return errors.New("connected to a closed port")
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				return fmt.Errorf("connect to a closed port: %w, want connection refused", err)
			}
			if d := time.Since(start); d > 2*time.Second {
				return fmt.Errorf("refused after %v: not a reset", d)
			}
			u, err := net.Dial("udp", netip.AddrPortFrom(a, userUDP+7).String())
			if err != nil {
				return err
			}
			defer u.Close()
			buf := make([]byte, 64)
			for try := 0; try < 5; try++ {
				u.Write([]byte("anyone?"))
				u.SetReadDeadline(time.Now().Add(time.Second))
				if _, err = u.Read(buf); errors.Is(err, syscall.ECONNREFUSED) {
					return nil
				}
			}
			return fmt.Errorf("UDP to a closed port: %v, want connection refused", err)
		})
		if err != nil {
			t.Fatalf("%v: %v", a, err)
		}
		if out := curl(t, w.peer, "-g", url("http", a, userPort)); !strings.HasPrefix(out, "user-space") {
			t.Fatalf("open port: %q", out)
		}
	}
	st, err := w.nx.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("answers: %+v", st.Switch.Answers)
}
