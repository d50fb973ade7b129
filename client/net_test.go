package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
)

// eventually polls cond until it holds or d passes: for state that settles
// asynchronously by design (a reaper, a worker round), not to hide races.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func nexusFlows(t testing.TB, n *nexus.Nexus) int {
	t.Helper()
	st, err := n.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st.Flows
}

// TestUDPEcho echoes datagrams from a ListenPacket socket on A to a dialed
// socket and to an unconnected one on B. The server's replies register a
// 5-tuple flow per client (a listener flow may not send UDP); closing the
// sockets tears every flow down.
func TestUDPEcho(t *testing.T) {
	w := newWorld(t)
	srv, err := w.sa.ListenPacket("udp", ":9")
	if err != nil {
		t.Fatal(err)
	}
	go udpEcho(srv)

	c, err := w.sb.Dial("udp", "198.18.0.1:9")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := w.sb.ListenPacket("udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(addrA4, 9))
	buf := make([]byte, 2048)
	for i := range 20 {
		msg := []byte(fmt.Sprintf("datagram %d", i))
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		n, err := c.Read(buf)
		if err != nil || !bytes.Equal(buf[:n], msg) {
			t.Fatalf("dialed: got %q, %v; want %q", buf[:n], err, msg)
		}
		pc.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := pc.WriteTo(msg, dst); err != nil {
			t.Fatal(err)
		}
		n, from, err := pc.ReadFrom(buf)
		if err != nil || !bytes.Equal(buf[:n], msg) || from.(*net.UDPAddr).AddrPort() != netip.AddrPortFrom(addrA4, 9) {
			t.Fatalf("unconnected: got %q from %v, %v; want %q", buf[:n], from, err, msg)
		}
	}
	// A: two listener flows (both families) and one reply flow per client.
	if got := nexusFlows(t, w.na); got != 4 {
		t.Errorf("nexus A has %d flows, want 4 (2 listeners, 2 replies)", got)
	}
	// B: the dialed 5-tuple, the unconnected socket's listener and its
	// reply... its send to A registered a 5-tuple too.
	if got := nexusFlows(t, w.nb); got != 3 {
		t.Errorf("nexus B has %d flows, want 3", got)
	}
	c.Close()
	pc.Close()
	srv.Close()
	for _, n := range []*nexus.Nexus{w.na, w.nb} {
		if got := nexusFlows(t, n); got != 0 {
			t.Errorf("%d flows left after every socket closed", got)
		}
	}
}

// TestIPv6Dial connects over IPv6 to a listener on one IPv6 address.
func TestIPv6Dial(t *testing.T) {
	w := newWorld(t)
	ln, err := w.sa.Listen("tcp6", "[2001:db8::1]:80")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	echoServer(t, ln)
	c, err := w.sb.Dial("tcp6", "[2001:db8::1]:80")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if la := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr(); la != addrB6 {
		t.Errorf("local address %v, want %v", la, addrB6)
	}
	msg := bytes.Repeat([]byte("six"), 100000)
	go c.Write(msg)
	got := make([]byte, len(msg))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo over IPv6: %v", err)
	}
}

// TestDialTimeoutReleasesFlow dials a port nobody listens on: the
// flowswitch of A drops the SYN (no flow, no host port), the dial times
// out, and the 5-tuple flow B registered for it is torn down.
func TestDialTimeoutReleasesFlow(t *testing.T) {
	w := newWorld(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := w.sb.DialContext(ctx, "tcp", "198.18.0.1:81")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial: %v, want a deadline error", err)
	}
	if got := nexusFlows(t, w.nb); got != 0 {
		t.Errorf("nexus B keeps %d flows after the failed dial", got)
	}
	for _, bad := range []string{"example.com:80", "198.18.0.1", "198.18.0.1:http-nonsense"} {
		if _, err := w.sb.Dial("tcp", bad); err == nil {
			t.Errorf("dial %q succeeded", bad)
		}
	}
	if _, err := w.sa.Listen("tcp", "198.18.0.2:80"); err == nil {
		t.Error("listened on an address that is not the stack's")
	}
}

// TestUnregisteredFlowDropped shows both lines of defence. A netstack
// socket opened behind the client's back (no flow registered) has its
// packets dropped by the endpoint, before the ring. A rogue app that
// writes packets straight onto its TX ring has them dropped by the
// flowswitch, each by its check: a port it does not hold, another port's
// flow, a wrong flow ID. Nothing reaches the wire.
func TestUnregisteredFlowDropped(t *testing.T) {
	w := newWorld(t)
	srv, err := w.sa.ListenPacket("udp4", ":9")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	// An honest flow of B, to spoof below.
	honest, err := w.sb.Dial("udp", "198.18.0.1:9")
	if err != nil {
		t.Fatal(err)
	}
	defer honest.Close()
	honestLocal := honest.LocalAddr().(*net.UDPAddr).AddrPort()
	before, err := w.nb.Stats()
	if err != nil {
		t.Fatal(err)
	}

	// 1. Behind the client's back: gonet on the same netstack.
	sneaky, err := gonet.DialUDP(w.sb.Netstack(), nil,
		&tcpip.FullAddress{Addr: tcpip.AddrFrom4(addrA4.As4()), Port: 9}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer sneaky.Close()
	noFlow := w.sb.Endpoint().Stats().TxNoFlow
	if _, err := sneaky.Write([]byte("unregistered")); err != nil {
		t.Logf("write: %v", err)
	}
	if got := w.sb.Endpoint().Stats().TxNoFlow; got != noFlow+1 {
		t.Errorf("endpoint dropped %d unregistered packets, want 1", got-noFlow)
	}

	// 2. A rogue app on its own port of nexus B.
	rogue, err := w.nb.OpenPort("rogue")
	if err != nil {
		t.Fatal(err)
	}
	defer rogue.Close()
	own := netip.AddrPortFrom(addrB4, 5555)
	ownKey := packet.MakeKey(packet.ProtoUDP, own, netip.AddrPortFrom(addrA4, 9))
	if _, err := rogue.Register(ownKey, flow.Connected); err != nil {
		t.Fatal(err)
	}
	dst := netip.AddrPortFrom(addrA4, 9)
	var bogus [16]byte
	sends := []struct {
		src  netip.AddrPort
		what string
	}{
		{netip.AddrPortFrom(addrB4, 4444), "a port it does not hold"},
		{honestLocal, "the honest stack's flow"},
		{own, "its own flow with a wrong flow ID"},
	}
	for _, s := range sends {
		rawSend(t, rogue.App(), udp4(s.src, dst, []byte("spoof: "+s.what)), bogus)
	}
	want := flowswitch.TxDrops{SrcPort: 1, NotOwner: 1, FlowID: 1}
	var after nexus.Stats
	eventually(t, 5*time.Second, "the flowswitch to take the rogue packets", func() bool {
		after, err = w.nb.Stats()
		return err == nil && after.Switch.TxDrops == want
	})
	if after.Link.TxPackets != before.Link.TxPackets {
		t.Errorf("%d packets reached the wire", after.Link.TxPackets-before.Link.TxPackets)
	}
	t.Logf("flowswitch drops: %+v", after.Switch.TxDrops)
}

// rawSend puts one IP packet on an app's TX ring with the given flow ID.
func rawSend(t testing.TB, app *channel.App, pkt []byte, id [16]byte) {
	t.Helper()
	var bufs [1]channel.Buf
	eventually(t, 5*time.Second, "a buffer on the alloc ring", func() bool {
		n, err := app.Alloc(bufs[:])
		if err != nil {
			t.Fatal(err)
		}
		return n == 1
	})
	b := bufs[0]
	b.Data = b.Data[:copy(b.Data, pkt)]
	m, err := app.Meta(b.Index)
	if err != nil {
		t.Fatal(err)
	}
	copy(m[channel.TxMetaFlowIDOff:], id[:])
	if n, err := app.Send([]channel.Buf{b}); n != 1 || err != nil {
		t.Fatalf("send: %d, %v", n, err)
	}
}

// udp4 builds an IPv4/UDP packet with valid checksums.
func udp4(src, dst netip.AddrPort, payload []byte) []byte {
	return (&packettest.Frame{Link: packet.RawIP, Src: src, Dst: dst, Proto: packet.ProtoUDP, Payload: payload}).Bytes()
}

// TestUDPFlood sends datagrams as fast as a writer can: when the endpoint
// queues them (ring or pool full) the socket's send buffer fills and the
// writer waits for the endpoint to release packets from its own goroutine.
// Every write must return (gonet's WriteTo could miss that wake-up and
// hang), and datagrams must arrive.
func TestUDPFlood(t *testing.T) {
	w := newWorld(t)
	srv, err := w.sa.ListenPacket("udp4", ":9")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	got := make(chan int, 1)
	go func() {
		buf := make([]byte, 2048)
		n := 0
		for {
			srv.SetReadDeadline(time.Now().Add(time.Second))
			if _, _, err := srv.ReadFrom(buf); err != nil {
				got <- n
				return
			}
			n++
		}
	}()
	const writers, each = 4, 5000
	done := make(chan error, writers)
	for range writers {
		go func() {
			c, err := w.sb.Dial("udp4", "198.18.0.1:9")
			if err != nil {
				done <- err
				return
			}
			defer c.Close()
			c.SetWriteDeadline(time.Now().Add(30 * time.Second))
			msg := make([]byte, 1400)
			for range each {
				if _, err := c.Write(msg); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for range writers {
		if err := <-done; err != nil {
			t.Fatalf("writer: %v", err)
		}
	}
	n := <-got
	if n == 0 {
		t.Fatal("no datagram arrived")
	}
	t.Logf("%d of %d datagrams arrived (UDP: the wire and rings may drop); endpoint %+v", n, writers*each, w.sb.Endpoint().Stats())
}
