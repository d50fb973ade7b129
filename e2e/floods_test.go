package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/skylane/skylane/nexus"
)

// floodTime bounds each flood of TestFloods.
const floodTime = 2 * time.Second

// TestFloods sends floods other than SYNs from the peer at full rate
// (hping3 --flood), each for floodTime, at a nexus with two apps: "web"
// serving HTTP and "echo" echoing UDP, beside the kernel's own HTTP server
// and UDP echo on the same interface (docs/design.md §5.5, §5.6):
//
//   - UDP to the echo app's port: the flood reaches the echo app; what it
//     cannot take is counted on its port (ring drops) or, when the nexus
//     cannot read the device as fast as the peer sends (two shared cores),
//     as the link's losses; web's port drops nothing, and the echo answers
//     again after the flood;
//   - ACKs and RSTs to web's listener, from the peer's address and from
//     spoofed ones: held to the listener's share (listen_share);
//   - UDP and SYNs to ports nobody claimed: the kernel's business, passed by
//     the XDP program without reaching the switch.
//
// During each, a second peer address fetches from web and from the kernel's
// server, one request after the other: at least 90 % of each are served.
func TestFloods(t *testing.T) {
	w := floodWorld(t)
	echo := w.newStack(t, "echo")
	pc, err := echo.ListenPacket("udp4", fmt.Sprintf(":%d", userUDP))
	if err != nil {
		t.Fatal(err)
	}
	udpEcho(t, pc)
	var kpc net.PacketConn
	if err := w.local.Do(func() (err error) {
		kpc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", kernelUDP))
		return err
	}); err != nil {
		t.Fatalf("kernel UDP echo: %v", err)
	}
	udpEcho(t, kpc)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	udpPing(t, w.peer, netip.AddrPortFrom(w.user4, userUDP))

	const unclaimed = 7777
	for _, f := range []struct {
		name string
		args []string // hping3's, before the target
		// toSwitch: the flood reaches the switch (a claimed port), and
		// is counted there as listen_share (listener) or as the echo
		// port's ring drops (udp).
		toSwitch, listener, udp bool
	}{
		{"udp-claimed", []string{"--udp", "-p", strconv.Itoa(userUDP), "-d", "64"}, true, false, true},
		{"ack-listener", []string{"-A", "-p", strconv.Itoa(userPort)}, true, true, false},
		{"rst-listener", []string{"-R", "-p", strconv.Itoa(userPort)}, true, true, false},
		{"ack-spoofed", []string{"-A", "-p", strconv.Itoa(userPort), "--rand-source"}, true, true, false},
		{"udp-unclaimed", []string{"--udp", "-p", strconv.Itoa(unclaimed), "-d", "64"}, false, false, false},
		{"syn-unclaimed", []string{"-S", "-p", strconv.Itoa(unclaimed)}, false, false, false},
	} {
		t.Run(f.name, func(t *testing.T) {
			before, err := w.nx.Stats()
			if err != nil {
				t.Fatal(err)
			}
			user, kern, sent := floodWhileAsking(t, ctx, w, f.args)
			after, err := w.nx.Stats()
			if err != nil {
				t.Fatal(err)
			}
			web, echoPort := portStats(t, after, "web"), portStats(t, after, "echo")
			web0, echo0 := portStats(t, before, "web"), portStats(t, before, "echo")
			read := after.Switch.Packets - before.Switch.Packets
			t.Logf("web: %v; kernel: %v; hping3: %s", user, kern, sent)
			t.Logf("switch read %d, listen_share %d; link passed %d to the kernel, lost %d; echo port ring drops %d; web port ring drops %d",
				read, after.Switch.ListenDrops-before.Switch.ListenDrops, after.Link.KernelPassed-before.Link.KernelPassed,
				after.Link.RxDrops-before.Link.RxDrops, echoPort.Channel.RxDrops-echo0.Channel.RxDrops, web.Channel.RxDrops-web0.Channel.RxDrops)
			checkServed(t, "web", user)
			checkServed(t, "the kernel's server", kern)
			if f.toSwitch && read < 1000 {
				t.Errorf("the switch read %d packets: no flood reached it", read)
			}
			if !f.toSwitch && read > 5_000 {
				t.Errorf("the switch read %d packets of a flood to a port nobody claimed (the XDP program passes them)", read)
			}
			if f.listener && after.Switch.ListenDrops == before.Switch.ListenDrops {
				t.Errorf("no listen_share drop: the listener took the whole flood")
			}
			if got := echoPort.Channel.RxPackets - echo0.Channel.RxPackets; f.udp && got < 1000 {
				t.Errorf("the echo app got %d packets of the flood to its port", got)
			}
			if d := web.Channel.RxDrops - web0.Channel.RxDrops; d > 0 {
				t.Errorf("web's port dropped %d packets for a full ring during a flood of another kind", d)
			}
			udpPing(t, w.peer, netip.AddrPortFrom(w.user4, userUDP))
			udpPing(t, w.peer, netip.AddrPortFrom(w.user4, kernelUDP))
		})
	}
}

// portStats returns the stats of the port of the stack named name (its
// channel is name-N).
func portStats(t *testing.T, st nexus.Stats, name string) nexus.PortStats {
	t.Helper()
	for _, p := range st.Ports {
		if strings.HasPrefix(p.Name, name+"-") {
			return p
		}
	}
	t.Fatalf("no port of %s in the nexus's stats", name)
	return nexus.PortStats{}
}

// floodWhileAsking runs hping3 --flood args at the user address from the
// peer for floodTime, fetching from the user-space server and the
// kernel's, in turn, from the legitimate address meanwhile.
func floodWhileAsking(t *testing.T, ctx context.Context, w *world, args []string) (user, kern floodResult, hping string) {
	t.Helper()
	done, sent, stop := startFlood(t, ctx, w, floodTime, args)
	defer stop()
	var ut, kt []time.Duration
	for stop := false; !stop; {
		for _, a := range []struct {
			port uint16
			r    *floodResult
			ttfb *[]time.Duration
		}{{userPort, &user, &ut}, {kernelPort, &kern, &kt}} {
			d, err := askTTFB(ctx, w, a.port, 3*time.Second)
			if err != nil {
				a.r.failures = append(a.r.failures, err.Error())
			} else {
				*a.ttfb = append(*a.ttfb, d)
			}
		}
		select {
		case <-done:
			stop = true
		default:
		}
	}
	user.summarize(ut)
	kern.summarize(kt)
	return user, kern, sent()
}
