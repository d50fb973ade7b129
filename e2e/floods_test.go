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

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif/drivers"
	"github.com/skylane/skylane/nexus"
)

// floodTime bounds each flood of TestFloods.
const floodTime = 2 * time.Second

// TestFloods sends floods other than SYNs from the peer at full rate
// (hping3 --flood), each for floodTime, at a nexus with two apps: "web"
// serving HTTP and "echo" echoing UDP, beside the kernel's own HTTP server
// and UDP echo on the same interface (docs/design.md §5.5, §5.6):
//
//   - UDP to the echo app's port: its RX ring fills and the excess is
//     counted on its port alone; web's port drops nothing and the echo
//     answers again after the flood;
//   - ACKs and RSTs to web's listener, from the peer's address and from
//     spoofed ones: held to the listener's share (listen_share);
//   - UDP and SYNs to ports nobody claimed: the kernel's business, passed by
//     the XDP program without reaching the switch.
//
// During each, a second peer address fetches from web and from the kernel's
// server, one request after the other: at least 90 % of each are served.
func TestFloods(t *testing.T) {
	nettest.RequireCommand(t, "hping3")
	nettest.RequireCommand(t, "curl")
	w := newWorld(t, drivers.AFXDP)
	ln, err := w.st.Listen("tcp4", fmt.Sprintf(":%d", userPort))
	if err != nil {
		t.Fatal(err)
	}
	serveHTTP(t, ln, "user")
	echo := w.newStack(t, "echo")
	pc, err := echo.ListenPacket("udp4", fmt.Sprintf(":%d", userUDP))
	if err != nil {
		t.Fatal(err)
	}
	udpEcho(t, pc)
	var (
		kln net.Listener
		kpc net.PacketConn
	)
	if err := w.local.Do(func() (err error) {
		if kln, err = net.Listen("tcp4", fmt.Sprintf(":%d", kernelPort)); err != nil {
			return err
		}
		kpc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", kernelUDP))
		return err
	}); err != nil {
		t.Fatalf("kernel servers: %v", err)
	}
	serveHTTP(t, kln, "kernel")
	udpEcho(t, kpc)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if out, err := w.peer.Command(ctx, "ip", "addr", "add", synFloodLegit+"/24", "dev", w.capIf).CombinedOutput(); err != nil {
		t.Fatalf("add %s to the peer: %v: %s", synFloodLegit, err, out)
	}
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
			web, echoPort := portStats(after, "web"), portStats(after, "echo")
			web0, echo0 := portStats(before, "web"), portStats(before, "echo")
			read := after.Switch.Packets - before.Switch.Packets
			t.Logf("web: %v; kernel: %v; hping3: %s", user, kern, sent)
			t.Logf("switch read %d, listen_share %d; link passed %d to the kernel, lost %d; echo port ring drops %d; web port ring drops %d",
				read, after.Switch.ListenDrops-before.Switch.ListenDrops, after.Link.KernelPassed-before.Link.KernelPassed,
				after.Link.RxDrops-before.Link.RxDrops, echoPort.Channel.RxDrops-echo0.Channel.RxDrops, web.Channel.RxDrops-web0.Channel.RxDrops)
			for _, r := range []struct {
				who string
				r   floodResult
			}{{"web", user}, {"the kernel's server", kern}} {
				if r.r.total == 0 || r.r.served*10 < r.r.total*9 {
					t.Errorf("%s served %d of %d requests during the flood, want at least 90 %%: %v", r.who, r.r.served, r.r.total, r.r.failures)
				}
			}
			if f.toSwitch && read < 10_000 {
				t.Errorf("the switch read %d packets: no flood reached it", read)
			}
			if !f.toSwitch && read > 5_000 {
				t.Errorf("the switch read %d packets of a flood to a port nobody claimed (the XDP program passes them)", read)
			}
			if f.listener && after.Switch.ListenDrops == before.Switch.ListenDrops {
				t.Errorf("no listen_share drop: the listener took the whole flood")
			}
			if f.udp && echoPort.Channel.RxDrops == echo0.Channel.RxDrops && after.Switch.AllocFails == before.Switch.AllocFails {
				t.Logf("the echo app kept up with the flood: no ring drop")
			}
			if d := web.Channel.RxDrops - web0.Channel.RxDrops; d > 0 {
				t.Errorf("web's port dropped %d packets for a full ring during a flood of another kind", d)
			}
			udpPing(t, w.peer, netip.AddrPortFrom(w.user4, userUDP))
			udpPing(t, w.peer, netip.AddrPortFrom(w.user4, kernelUDP))
		})
	}
}

// portStats returns the stats of the port named name.
func portStats(st nexus.Stats, name string) nexus.PortStats {
	for _, p := range st.Ports {
		if p.Name == name {
			return p
		}
	}
	return nexus.PortStats{}
}

// floodWhileAsking runs hping3 --flood args at the user address from the
// peer for floodTime, fetching from the user-space server and the
// kernel's, in turn, from the legitimate address meanwhile.
func floodWhileAsking(t *testing.T, ctx context.Context, w *world, args []string) (user, kern floodResult, sent string) {
	t.Helper()
	hargs := append([]string{strconv.Itoa(int(floodTime / time.Second)), "hping3", "-q", "--flood"}, args...)
	flood := w.peer.Command(ctx, "timeout", append(hargs, w.user4.String())...)
	var out strings.Builder
	flood.Stdout, flood.Stderr = &out, &out
	if err := flood.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		flood.Wait()
		close(done)
	}()
	defer func() {
		flood.Process.Kill()
		<-done
	}()
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
	s := strings.TrimSpace(out.String())
	if i := strings.Index(s, "packets transmitted"); i >= 0 {
		s = s[strings.LastIndex(s[:i], "\n")+1 : i+len("packets transmitted")]
	}
	return user, kern, s
}
