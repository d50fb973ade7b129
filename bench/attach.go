package bench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/skylane/skylane/client"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/nexus"
	server "github.com/skylane/skylane/nexus/control"
	"github.com/skylane/skylane/nexus/policy"
)

// The attach scenario: how long an app takes to attach to a nexus over its
// control socket and be ready to serve: client.Connect, client.New (the
// control session, SO_PEERCRED and the policy, the port's channel made and
// sent as memfds and eventfds, mapped, a netstack built on it) and Listen
// on a TCP port (the listener flow checked against the policy and
// registered). The nexus is in this process on a memif wire, served by
// the same control server as `skylane nexus`, under a policy that has a
// rule for this process's uid (root is checked only for being root). Each
// attach is closed, untimed, before the next. Baseline: what a kernel
// server does for the same, socket()+bind()+listen() on loopback, in the
// same run. Lower is better; the target is p50 under 5 ms.
const (
	attachRow      = "attach/connect+open+listen"
	attachBaseName = "kernel socket()+bind()+listen() on 127.0.0.1"
	attachPort     = 8080
	// attachWarmup attaches run before the clock: the first builds
	// netstack's and the pool's lazily made state.
	attachWarmup = 3
)

var attachAddr = netip.MustParseAddr("198.18.0.1") // RFC 2544 benchmarking range

func runAttach(cfg Config) (rep Report, err error) {
	rep = Report{Scenario: "attach", Machine: Machine()}
	if !cfg.wants(attachRow) {
		return rep, nil
	}
	la, lb, err := memif.NewPair(memif.Options{Name: "attach"})
	if err != nil {
		return rep, fmt.Errorf("attach: %w", err)
	}
	defer lb.Close()
	nx, err := nexus.New(nexus.Options{Link: la, Addrs: []netip.Addr{attachAddr}})
	if err != nil {
		la.Close()
		return rep, fmt.Errorf("attach: %w", err)
	}
	defer nx.Close()
	dir, err := os.MkdirTemp("", "skylane-bench-attach")
	if err != nil {
		return rep, fmt.Errorf("attach: %w", err)
	}
	defer os.RemoveAll(dir)
	sock, err := server.ListenSocket(filepath.Join(dir, "nexus.sock"), -1)
	if err != nil {
		return rep, fmt.Errorf("attach: %w", err)
	}
	defer sock.Close()
	uid := os.Getuid()
	pol, err := policy.Parse("bench.toml", fmt.Appendf(nil, "[[allow]]\nuid = %d\ntcp = [\"%d\"]\nmax_flows = 100\n", uid, attachPort), policy.System())
	if err != nil {
		return rep, fmt.Errorf("attach: %w", err)
	}
	srv := server.NewServer(nx, server.ServerOptions{Policy: pol})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, sock.UnixListener) }()
	defer func() {
		cancel()
		if serr := <-served; serr != nil && err == nil {
			err = fmt.Errorf("attach: %w", serr)
		}
	}()

	ours := func() (time.Duration, error) { return attachOnce(sock.Path()) }
	for range attachWarmup {
		if _, err := ours(); err != nil {
			return rep, fmt.Errorf("attach warm-up: %w", err)
		}
	}
	var o, b []time.Duration
	rounds := max(cfg.Rounds, 1)
	d := cfg.Duration / time.Duration(rounds)
	for i := range rounds {
		if err := cfg.roundStart(attachRow, i, rounds); err != nil {
			return rep, err
		}
		l, err := timeRepeatedly(d, ours)
		if err != nil {
			return rep, fmt.Errorf("%s: %w", attachRow, err)
		}
		o = append(o, l...)
		if l, err = timeRepeatedly(d, kernelListenOnce); err != nil {
			return rep, fmt.Errorf("%s baseline: %w", attachRow, err)
		}
		b = append(b, l...)
	}
	op50, op99 := percentiles(o)
	bp50, bp99 := percentiles(b)
	rep.Results = append(rep.Results, Result{
		Name: attachRow, Unit: "µs (p50)", Value: op50, LowerIsBetter: true,
		BaselineName: attachBaseName, BaselineValue: bp50, Ratio: bp50 / op50,
		Extra: map[string]any{
			"p99_us": op99, "baseline_p99_us": bp99, "attaches": len(o), "baseline_listens": len(b),
			"target_p50_us": 5000, "meets_target": op50 < 5000,
		},
	})
	return rep, nil
}

// timeRepeatedly runs f until d has passed (at least once) and returns
// the times it measured.
func timeRepeatedly(d time.Duration, f func() (time.Duration, error)) ([]time.Duration, error) {
	var lat []time.Duration
	for end := time.Now().Add(d); len(lat) == 0 || time.Now().Before(end); {
		l, err := f()
		if err != nil {
			return nil, err
		}
		lat = append(lat, l)
	}
	return lat, nil
}

// attachOnce attaches an app to the nexus at sock and listens, timed, then
// closes it all, untimed.
func attachOnce(sock string) (time.Duration, error) {
	start := time.Now()
	nx, err := client.Connect(sock)
	if err != nil {
		return 0, err
	}
	st, err := client.New(nx, client.Options{Name: "attach"})
	if err != nil {
		return 0, err
	}
	ln, err := st.Listen("tcp", netip.AddrPortFrom(attachAddr, attachPort).String())
	took := time.Since(start)
	if err != nil {
		st.Close()
		return 0, err
	}
	ln.Close()
	if err := st.Close(); err != nil {
		return 0, err
	}
	return took, nil
}

// kernelListenOnce is the baseline: a kernel TCP listener on loopback.
func kernelListenOnce() (time.Duration, error) {
	start := time.Now()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	took := time.Since(start)
	if err != nil {
		return 0, err
	}
	ln.Close()
	return took, nil
}
