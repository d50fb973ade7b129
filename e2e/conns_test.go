package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/internal/connload"
	"github.com/skylane/skylane/netif/drivers"
	"github.com/skylane/skylane/nexus/inproc"
)

// Many connections, as a user would open them: kernel clients in the peer
// namespace (child processes of the test binary, each holding its share
// under the 20,000 open files a process may have here, from its own source
// address, so the client port range is not the limit) open connClients ×
// connsPerClient TCP connections to a user-space server and keep them all
// open; then each sends a request on every one of them and reads the
// answer. The server's port is limited to exactly those flows and its
// listener (flowswitch.Options.MaxPortFlows): one connection more, a curl,
// is refused visibly, reset, and counted. Once the clients close, the
// flows go back to the listener's alone.
const (
	connClients    = 4
	connsPerClient = 5000
	// connDialers dials (and requests) are in flight per client: 64 in
	// all, under listenBacklog; a quarter of that under the race
	// detector, whose several times slower server, on a host busy with
	// other tests, otherwise overflows netstack's accept queue and loses
	// the last ACK of a cookie handshake (a real limit, counted in the
	// log line below; the connection count is not lowered).
	connDialers   = 16 / (1 + 3*raceDetectorInt)
	connClientEnv = "SKYLANE_E2E_CONN_CLIENT"
)

func TestManyConnections(t *testing.T) {
	const total = connClients * connsPerClient
	w := newWorldWith(t, drivers.AFXDP, flowswitch.Options{MaxPortFlows: total + 1})
	// A stack of its own with small socket buffers: the test is about
	// holding many connections, not about their throughput.
	st, err := client.New(inproc.Nexus(w.nx), client.Options{Name: "conns", BufferSize: 16 << 10, TimeWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("close stack: %v", err)
		}
	})
	ln, err := st.Listen("tcp4", fmt.Sprintf(":%d", userPort))
	if err != nil {
		t.Fatal(err)
	}
	var open, refused atomic.Int64
	var handlers sync.WaitGroup
	var errMu sync.Mutex
	readErrs := map[string]int{}
	acceptErrs := map[string]int{} // temporary Accept errors but the limit's
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		for {
			c, err := ln.Accept()
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Temporary() {
					if errors.Is(err, client.ErrTooManyFlows) {
						refused.Add(1)
					} else {
						errMu.Lock()
						acceptErrs[err.Error()]++
						errMu.Unlock()
					}
					continue
				}
				return
			}
			open.Add(1)
			handlers.Add(1)
			go func() {
				defer handlers.Done()
				defer open.Add(-1)
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						errMu.Lock()
						readErrs[err.Error()]++
						errMu.Unlock()
						return
					}
					if _, err := io.WriteString(c, "pong "+line); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		st.Close() // aborts the connections still open, so their handlers return
		<-acceptDone
		handlers.Wait()
	})
	baseFlows := nexusFlows(t, w)
	runtime.GC()
	baseRSS := rss(t)

	// The clients' source addresses, on the peer's end of the veth.
	srcs := make([]netip.Addr, connClients)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for i := range srcs {
		srcs[i] = netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)})
		if out, err := w.peer.Command(ctx, "ip", "addr", "add", srcs[i].String()+"/24", "dev", w.capIf).CombinedOutput(); err != nil {
			t.Fatalf("add %v to the peer: %v: %s", srcs[i], err, out)
		}
	}
	server := netip.AddrPortFrom(w.user4, userPort).String()
	start := time.Now()
	kids := make([]*connKid, connClients)
	for i := range kids {
		kids[i] = startConnKid(t, ctx, w, server, srcs[i])
	}
	for i, k := range kids {
		line := k.line(t, "open")
		n, failed := fields2(t, line)
		if n != connsPerClient || failed != 0 {
			t.Fatalf("client %d (%v): %s", i, srcs[i], line)
		}
	}
	// Some handshakes may complete at the server only with the request:
	// a final ACK netstack drops while its accept queue is full, after a
	// SYN cookie, is not sent again. So the connections are counted once
	// each carried its request, all still open.
	opened := time.Since(start)
	// A request on every connection.
	for _, k := range kids {
		k.say(t, "go")
	}
	for i, k := range kids {
		line := k.line(t, "served")
		n, failed := fields2(t, line)
		if n != connsPerClient || failed != 0 {
			t.Errorf("client %d (%v): %s", i, srcs[i], line)
		}
	}
	{
		tcp, es := st.Netstack().Stats().TCP, st.Endpoint().Stats()
		t.Logf("netstack: ack drops %d, syn drops %d, cookies sent %d, rcvd %d, invalid %d; passive opens %d, current established %d; "+
			"stack: auto %d in %d batches, reaped %d, refused %d, handshake drops %d, no flow %d",
			tcp.ListenOverflowAckDrop.Value(), tcp.ListenOverflowSynDrop.Value(), tcp.ListenOverflowSynCookieSent.Value(),
			tcp.ListenOverflowSynCookieRcvd.Value(), tcp.ListenOverflowInvalidSynCookieRcvd.Value(),
			tcp.PassiveConnectionOpenings.Value(), tcp.CurrentEstablished.Value(),
			es.FlowsAuto, es.RegisterBatches, es.FlowsReaped, es.FlowsRefused, es.TxHandshake, es.TxNoFlow)
	}
	errMu.Lock()
	if len(acceptErrs) > 0 {
		t.Errorf("Accept failed: %v", acceptErrs)
	}
	errMu.Unlock()
	waitFor(t, w, 30*time.Second, "every connection accepted and open", func() bool { return open.Load() == total })
	flows := nexusFlows(t, w)
	runtime.GC()
	perConn := float64(rss(t)-baseRSS) / total
	t.Logf("%d connections from %d kernel clients open in %v (%.0f/s); nexus flows %d (baseline %d); "+
		"RSS of the test process (nexus and app) %.1f KiB per connection",
		total, connClients, opened.Round(time.Millisecond), total/opened.Seconds(), flows, baseFlows, perConn/1024)
	t.Logf("opened: %s", rxDrops(t, w))
	if flows != baseFlows+total {
		t.Errorf("%d flows in the nexus, want %d: the listener's and one per connection", flows, baseFlows+total)
	}

	// The port is at its limit: one more connection is reset, counted.
	out, err := w.peer.Command(ctx, "curl", "-sS", "--max-time", "10", url("http", w.user4, userPort)).CombinedOutput()
	// The RST may come before curl looked at its connect (exit 7,
	// "Couldn't connect") or after (exit 56, "Connection reset by peer").
	if err == nil || !(strings.Contains(string(out), "reset") || strings.Contains(string(out), "Couldn't connect")) {
		t.Errorf("curl past the limit: %v: %s; want a connection reset", err, out)
	}
	ns, err := w.nx.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if ns.Switch.FlowLimits.PortFull == 0 || st.Endpoint().Stats().FlowLimitHits == 0 {
		t.Errorf("the refusal is not counted: switch %+v, stack %d limit hits",
			ns.Switch.FlowLimits, st.Endpoint().Stats().FlowLimitHits)
	}
	waitFor(t, w, 10*time.Second, "Accept to report the refusal", func() bool { return refused.Load() > 0 })

	es, tcp := st.Endpoint().Stats(), st.Netstack().Stats().TCP
	t.Logf("served: %d connections open, %s; stack: %d flows registered on demand in %d batches, %d reaped, %d refused; "+
		"netstack: %d resets sent, %d established resets, %d established timeouts, %d retransmits",
		open.Load(), rxDrops(t, w), es.FlowsAuto, es.RegisterBatches, es.FlowsReaped, es.FlowsRefused,
		tcp.ResetsSent.Value(), tcp.EstablishedResets.Value(), tcp.EstablishedTimedout.Value(), tcp.Retransmits.Value())
	for _, k := range kids {
		k.in.Close() // each closes its connections, paced by the server
	}
	for i, k := range kids {
		if n, failed := fields2(t, k.line(t, "closed")); n != connsPerClient || failed != 0 {
			t.Errorf("client %d (%v) closed %d, %d failed", i, srcs[i], n, failed)
		}
		k.finish(t)
	}
	waitFor(t, w, 60*time.Second, "every connection closed and its flow gone", func() bool {
		return open.Load() == 0 && nexusFlows(t, w) == baseFlows
	})
	t.Logf("closed: %s", rxDrops(t, w))
	errMu.Lock()
	defer errMu.Unlock()
	if n := readErrs["EOF"]; n != total || len(readErrs) != 1 {
		t.Errorf("the server's connections ended with %v, want %d EOF", readErrs, total)
	}
}

// connKid is one kernel client process in the peer namespace.
type connKid struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Reader
	lines chan string
	err   strings.Builder
}

func startConnKid(t *testing.T, ctx context.Context, w *world, server string, src netip.Addr) *connKid {
	t.Helper()
	k := &connKid{cmd: w.peer.Command(ctx, os.Args[0]), lines: make(chan string, 4)}
	spec := connload.Spec{Server: netip.MustParseAddrPort(server), Source: src, Count: connsPerClient, InFlight: connDialers}
	k.cmd.Env = append(os.Environ(), connClientEnv+"="+spec.String())
	k.cmd.Stderr = &k.err
	var err error
	if k.in, err = k.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := k.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := k.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(k.lines)
		s := bufio.NewScanner(out)
		for s.Scan() {
			k.lines <- s.Text()
		}
	}()
	t.Cleanup(func() {
		k.in.Close()
		k.cmd.Process.Kill()
		k.cmd.Wait()
	})
	return k
}

// line waits for the client's next line, which starts with what.
func (k *connKid) line(t *testing.T, what string) string {
	t.Helper()
	select {
	case l, ok := <-k.lines:
		if !ok || !strings.HasPrefix(l, what+" ") {
			t.Fatalf("client said %q (%v), want %q ...; stderr: %s", l, ok, what, k.err.String())
		}
		return l
	case <-time.After(2 * time.Minute):
		t.Fatalf("client silent, waiting for %q; stderr: %s", what, k.err.String())
	}
	return ""
}

func (k *connKid) say(t *testing.T, s string) {
	t.Helper()
	if _, err := io.WriteString(k.in, s+"\n"); err != nil {
		t.Fatal(err)
	}
}

// finish closes the client's stdin, on which it closes its connections and
// exits, and waits for it.
func (k *connKid) finish(t *testing.T) {
	t.Helper()
	k.in.Close()
	if err := k.cmd.Wait(); err != nil {
		t.Errorf("client: %v; stderr: %s", err, k.err.String())
	}
}

// fields2 reads "word N failed M ..." into N and M.
func fields2(t *testing.T, line string) (n, failed int) {
	t.Helper()
	f := strings.Fields(line)
	if len(f) < 4 {
		t.Fatalf("client said %q", line)
	}
	n, err1 := strconv.Atoi(f[1])
	failed, err2 := strconv.Atoi(f[3])
	if err1 != nil || err2 != nil {
		t.Fatalf("client said %q", line)
	}
	return n, failed
}

func nexusFlows(t *testing.T, w *world) int {
	t.Helper()
	st, err := w.nx.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st.Flows
}

// rxDrops says what the switch dropped on receive so far.
func rxDrops(t *testing.T, w *world) string {
	st, err := w.nx.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d flows, switch delivered %d, RX ring drops %d, alloc fails %d",
		st.Flows, st.Switch.Delivered, st.Switch.RxRingDrops, st.Switch.AllocFails)
}

// waitFor polls cond until it holds, failing the test after d.
func waitFor(t *testing.T, w *world, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s (%s)", d, what, rxDrops(t, w))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rss returns the process's resident set size in bytes.
func rss(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("cannot read RSS: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				break
			}
			return kb << 10
		}
	}
	t.Skip("no VmRSS in /proc/self/status")
	return 0
}

// connClient is the kernel client process (see TestManyConnections and
// package connload), its spec in the environment.
func connClient() int {
	spec, err := connload.ParseSpec(os.Getenv(connClientEnv))
	if err == nil {
		err = connload.Run(spec, os.Stdin, os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	return 0
}
