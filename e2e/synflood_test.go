package e2e

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/netif/drivers"
)

// synFloodTime bounds each flood; synFloodLegit is the second peer address
// the legitimate client asks from.
const (
	synFloodTime  = 4 * time.Second
	synFloodLegit = "198.18.0.20"
)

// synFloods are the floods TestSYNFlood sends: hping3 at full rate from
// the peer, from its own address with rotating source ports (the peer's
// kernel answers each SYN-ACK with a RST, which the listener gets too),
// and from random spoofed sources.
var synFloods = []struct {
	name string
	args []string
}{
	{"one-source", nil},
	{"spoofed", []string{"--rand-source"}},
}

// floodResult is what one flood did to the service of one port.
type floodResult struct {
	served, total int
	p50, p99      time.Duration // time to first byte of the served requests
	recovered     time.Duration // from the flood's end to the first request served after it
	after         error         // the last request after the flood, if none was served in time
	maxFlows      int           // the most flows the nexus held during the flood
	maxInUse      int           // the most pool buffers the app's port held
	failures      []string
	sent          string // hping3's own count
	counters      string // what the nexus and its link counted
}

// summarize sets the counts and percentiles from the times to first byte
// of the served requests (failures are already in r).
func (r *floodResult) summarize(ttfb []time.Duration) {
	slices.Sort(ttfb)
	r.served, r.total = len(ttfb), len(ttfb)+len(r.failures)
	if len(ttfb) > 0 {
		r.p50, r.p99 = ttfb[len(ttfb)/2], ttfb[min(len(ttfb)-1, len(ttfb)*99/100)]
	}
}

func (r floodResult) String() string {
	return fmt.Sprintf("%d of %d requests served (%.0f %%), time to first byte p50 %v p99 %v, served again %v after",
		r.served, r.total, 100*float64(r.served)/float64(max(r.total, 1)), r.p50, r.p99, r.recovered.Round(time.Millisecond))
}

// TestSYNFlood floods the user-space HTTP server's port with SYNs from the
// peer (each of synFloods, for synFloodTime), while curl asks, one request
// after the other, from a second peer address; then the same floods hit
// the kernel's own HTTP port on the same interface, for the kernel's
// figures in the same run.
//
// Held for the user-space port (docs/design.md §5.6): at least 90 % of the
// requests are served during each flood, and normal service within a
// second after it. The times to first byte, ours and the kernel's, are
// logged, not checked: a timed check on two shared cores would fail on a
// busy host, not on a slow nexus. A legitimate SYN lost costs a second (the
// client's retransmission): lost before the switch (the link's receive
// ring full, when the nexus gets too little CPU) or refused by it (a
// spoofed flood's sources are each as light as the client).
// Half-open connections hold no nexus state (the listener's flow answers
// every handshake; netstack keeps the half-open ones, with SYN cookies past
// its backlog): the flow table holds no more than the listener and the
// legitimate connections, and no control round trip is made per SYN. The
// app's pool stays under its cap, the process's RSS bounded, and the
// flood shows in the counters (listen_share).
func TestSYNFlood(t *testing.T) {
	w := floodWorld(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := askTTFB(ctx, w, userPort, 5*time.Second); err != nil {
		t.Fatalf("before the flood: %v", err)
	}
	baseFlows := nexusFlows(t, w)
	runtime.GC()
	baseRSS := rss(t)
	before, err := w.nx.Stats()
	if err != nil {
		t.Fatal(err)
	}
	// After a flood the service is normal within a second. Under the race
	// detector the stack drains what the flood left queued (a ring of
	// SYNs) several times slower: two seconds then.
	recoverIn := time.Second * (1 + raceDetectorInt)
	var maxGrown int64
	for _, f := range synFloods {
		t.Run(f.name, func(t *testing.T) {
			user := floodPort(t, ctx, w, userPort, f.args, recoverIn)
			runtime.GC()
			grown := rss(t) - baseRSS
			maxGrown = max(maxGrown, grown)
			kern := floodPort(t, ctx, w, kernelPort, f.args, recoverIn)
			t.Logf("user-space port: %v; the nexus held at most %d flows (baseline %d), the app's pool %d buffers; RSS grew %d KiB; hping3: %s",
				user, user.maxFlows, baseFlows, user.maxInUse, grown>>10, user.sent)
			t.Logf("kernel's port:   %v; hping3: %s", kern, kern.sent)
			t.Logf("counters during the flood on the user-space port: %s", user.counters)
			if len(user.failures) > 0 {
				t.Logf("failures: %v", user.failures)
			}
			if user.after != nil {
				t.Errorf("not served within %v after the flood: %v", recoverIn, user.after)
			}
			checkServed(t, "the user-space port", user)
			// Half-open connections hold no nexus state: the flows are
			// the listener's and the legitimate connections' (one curl
			// at a time, the closed ones not reaped yet), against the
			// tens of thousands of SYNs answered.
			if user.maxFlows > baseFlows+8 {
				t.Errorf("the nexus held %d flows during the flood, baseline %d: half-open connections took flows", user.maxFlows, baseFlows)
			}
		})
	}
	st, err := w.nx.Stats()
	if err != nil {
		t.Fatal(err)
	}
	tcp := w.st.Netstack().Stats().TCP
	t.Logf("all floods: %d packets received by the switch, %d delivered, %d refused for the listener's share (listen_share), %d RX ring drops, %d alloc fails; "+
		"netstack sent %d SYN cookies; the stack dropped %d packets of handshaking connections",
		st.Switch.Packets-before.Switch.Packets, st.Switch.Delivered-before.Switch.Delivered, st.Switch.ListenDrops-before.Switch.ListenDrops,
		st.Switch.RxRingDrops-before.Switch.RxRingDrops, st.Switch.AllocFails-before.Switch.AllocFails,
		tcp.ListenOverflowSynCookieSent.Value(), w.st.Endpoint().Stats().TxHandshake)
	if st.Switch.Packets-before.Switch.Packets < 1000 {
		t.Errorf("only %d packets reached the switch: no flood", st.Switch.Packets-before.Switch.Packets)
	}
	if st.Switch.ListenDrops == before.Switch.ListenDrops {
		t.Errorf("no listen_share drop: the flood did not show in the counters")
	}
	if tcp.ListenOverflowSynCookieSent.Value() == 0 {
		t.Errorf("netstack sent no SYN cookie: the flood filled no backlog")
	}
	// The bound: the app's pool (nexus.DefaultMaxSegments, 32 MiB) plus
	// the listener's share of the RX ring in netstack's queues, and the
	// heap the Go runtime keeps, well under this.
	if maxGrown > 256<<20 {
		t.Errorf("RSS grew %d MiB during a flood", maxGrown>>20)
	}
}

// startFlood starts hping3 --flood args at the user address from the peer
// for d (whole seconds). done is closed when hping3 has ended; sent
// returns its count of packets sent, once it has; stop kills it and waits.
func startFlood(t *testing.T, ctx context.Context, w *world, d time.Duration, args []string) (done <-chan struct{}, sent func() string, stop func()) {
	t.Helper()
	hargs := append([]string{strconv.Itoa(int(d / time.Second)), "hping3", "-q", "--flood"}, args...)
	flood := w.peer.Command(ctx, "timeout", append(hargs, w.user4.String())...)
	out := new(strings.Builder)
	flood.Stdout, flood.Stderr = out, out
	if err := flood.Start(); err != nil {
		t.Fatal(err)
	}
	ended := make(chan struct{})
	go func() {
		flood.Wait()
		close(ended)
	}()
	sent = func() string {
		<-ended
		return lastLine(out.String(), "packets transmitted")
	}
	stop = func() {
		flood.Process.Kill()
		<-ended
	}
	return ended, sent, stop
}

// floodWorld is the world the flood tests share: AF_XDP, a user-space HTTP
// server on userPort, the kernel's on kernelPort, and synFloodLegit on
// the peer for the legitimate client.
func floodWorld(t *testing.T) *world {
	t.Helper()
	nettest.RequireCommand(t, "hping3")
	nettest.RequireCommand(t, "curl")
	w := newWorld(t, drivers.AFXDP)
	ln, err := w.st.Listen("tcp4", fmt.Sprintf(":%d", userPort))
	if err != nil {
		t.Fatal(err)
	}
	serveHTTP(t, ln, "user")
	kernelHTTP(t, w.local)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if out, err := w.peer.Command(ctx, "ip", "addr", "add", synFloodLegit+"/24", "dev", w.capIf).CombinedOutput(); err != nil {
		t.Fatalf("add %s to the peer: %v: %s", synFloodLegit, err, out)
	}
	return w
}

// checkServed fails the test if fewer than 90 % of the requests r counts
// were served during a flood. Under the race detector the user-space stack
// and the nexus are several times slower while the flood is not, so there
// the share is logged, not checked (make test runs the flood tests without
// the race detector too).
func checkServed(t *testing.T, who string, r floodResult) {
	t.Helper()
	if r.total > 0 && r.served*10 >= r.total*9 {
		return
	}
	if raceDetector {
		t.Logf("%s served %d of %d requests during the flood (race detector: not checked)", who, r.served, r.total)
		return
	}
	t.Errorf("%s served %d of %d requests during the flood, want at least 90 %%: %v", who, r.served, r.total, r.failures)
}

// kernelHTTP serves HTTP ("kernel") from a kernel socket in ns on
// kernelPort, every IPv4 address, until the test ends.
func kernelHTTP(t *testing.T, ns *nettest.NS) {
	t.Helper()
	var kln net.Listener
	if err := ns.Do(func() (err error) {
		kln, err = net.Listen("tcp4", fmt.Sprintf(":%d", kernelPort))
		return err
	}); err != nil {
		t.Fatalf("kernel server: %v", err)
	}
	serveHTTP(t, kln, "kernel")
}

// askTTFB runs one curl from the legitimate address to port of the user
// address and returns its time to first byte, or an error.
func askTTFB(ctx context.Context, w *world, port uint16, maxTime time.Duration) (time.Duration, error) {
	out, err := w.peer.Command(ctx, "curl", "-sS", "-o", "/dev/null", "-w", "%{time_starttransfer}",
		"--interface", synFloodLegit, "--max-time", strconv.FormatFloat(maxTime.Seconds(), 'f', 3, 64),
		url("http", w.user4, port)).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("curl: %v: %s", err, out)
	}
	s, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
	if err != nil {
		return 0, fmt.Errorf("curl printed %q", out)
	}
	return time.Duration(s * float64(time.Second)), nil
}

// floodPort floods port from the peer with hping3 (extra arguments args)
// for synFloodTime while asking it, and then asks until it answers again
// (at most recoverIn).
func floodPort(t *testing.T, ctx context.Context, w *world, port uint16, args []string, recoverIn time.Duration) floodResult {
	t.Helper()
	before, err := w.nx.Stats()
	if err != nil {
		t.Fatal(err)
	}
	floodDone, sent, stop := startFlood(t, ctx, w, synFloodTime, append([]string{"-S", "-p", strconv.Itoa(int(port))}, args...))
	defer stop()

	// During the flood: curl after curl (each bounded: a SYN lost costs a
	// retransmission a second later), and the most flows and buffers the
	// nexus held.
	var (
		mu   sync.Mutex
		r    floodResult
		ttfb []time.Duration
	)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-floodDone:
				return
			case <-time.After(10 * time.Millisecond):
			}
			st, err := w.nx.Stats()
			if err != nil {
				continue
			}
			mu.Lock()
			r.maxFlows = max(r.maxFlows, st.Flows)
			for _, p := range st.Ports {
				r.maxInUse = max(r.maxInUse, p.InUse)
			}
			mu.Unlock()
		}
	}()
	for done := false; !done; {
		d, err := askTTFB(ctx, w, port, 3*time.Second)
		select {
		case <-floodDone:
			done = true // this one may have ended with the flood
		default:
		}
		if err != nil {
			r.failures = append(r.failures, err.Error())
		} else {
			ttfb = append(ttfb, d)
		}
	}
	<-sampled
	floodEnd := time.Now()
	for time.Since(floodEnd) < recoverIn {
		if _, r.after = askTTFB(ctx, w, port, recoverIn-time.Since(floodEnd)); r.after == nil {
			break
		}
	}
	r.recovered = time.Since(floodEnd)
	r.summarize(ttfb)
	r.sent = sent()
	st, err := w.nx.Stats()
	if err != nil {
		t.Fatal(err)
	}
	r.counters = fmt.Sprintf("switch read %d, delivered %d, refused %d (listen_share), %d alloc fails; link lost %d, passed %d to the kernel; switch sent %d, the device refused %d",
		st.Switch.Packets-before.Switch.Packets, st.Switch.Delivered-before.Switch.Delivered, st.Switch.ListenDrops-before.Switch.ListenDrops,
		st.Switch.AllocFails-before.Switch.AllocFails, st.Link.RxDrops-before.Link.RxDrops, st.Link.KernelPassed-before.Link.KernelPassed,
		st.Switch.TxPackets-before.Switch.TxPackets, st.Link.TxDrops-before.Link.TxDrops)
	return r
}
