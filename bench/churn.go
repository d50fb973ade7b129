package bench

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// conns/churn: open/close cycles. A cycle opens connsWave connections at
// once (connsClientsN dialers), holds them all open, then sends a byte on
// each, reads the answer and closes it; the row's value is connections per
// second through such cycles, ours against the kernel server on the same
// veth, same run, alternating rounds. Before the first cycle and after the
// last, once TIME-WAIT has passed, it takes the user-space side's figures:
// the nexus's flows and steering entries, the port's pool segments (after
// the pool's idle timeout), this process's goroutines and RSS (after a GC
// that returns freed memory to the OS). back_to_baseline says whether each
// came back: flows, steering entries, segments and goroutines to their
// value before, RSS to within connsRSSSlack of it (the Go heap keeps some
// of what it grew to, and netstack keeps pools of its own).
const (
	connsChurnRow = "conns/churn"
	connsWave     = 2000
	// connsSettle bounds the wait for the figures to come back: TIME-WAIT,
	// the stack's reaper, the pool's idle timeout (10 s) and its reaper.
	connsSettle   = 30 * time.Second
	connsRSSSlack = 16 << 20
)

// churnFigures are the user-space side's figures before or after churn.
type churnFigures struct {
	flows, steered, segments, goroutines int
	rss                                  int64
}

func churnRow(cfg Config, h *udpHosts) (Result, error) {
	cfg.progress("conns %s", connsChurnRow)
	u, err := h.newUserServer()
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", connsChurnRow, err)
	}
	defer u.close()
	userDial, kernDial := h.peerDial(connsUserPort), h.peerDial(connsKernPort)
	// A warm-up cycle each, so that both sides have grown what they keep
	// (netstack's and the runtime's pools) before the baseline.
	for _, dial := range []func() (net.Conn, error){userDial, kernDial} {
		if _, _, err := churnCycles(dial, 0); err != nil {
			return Result{}, fmt.Errorf("%s: warm-up: %w", connsChurnRow, err)
		}
	}
	before, err := u.settle(nil)
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", connsChurnRow, err)
	}
	rounds := max(cfg.Rounds, 1)
	d := cfg.Duration / time.Duration(rounds)
	var ours, base []float64
	var failed, baseFailed uint64
	for i := range rounds {
		if err := cfg.roundStart(connsChurnRow, i, rounds); err != nil {
			return Result{}, err
		}
		r, f, err := churnCycles(userDial, d)
		if err != nil {
			return Result{}, fmt.Errorf("%s: %w", connsChurnRow, err)
		}
		ours, failed = append(ours, r), failed+f
		b, f, err := churnCycles(kernDial, d)
		if err != nil {
			return Result{}, fmt.Errorf("%s baseline: %w", connsChurnRow, err)
		}
		base, baseFailed = append(base, b), baseFailed+f
	}
	after, err := u.settle(&before)
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", connsChurnRow, err)
	}
	res := Throughput(connsChurnRow, "conn/s", median(ours), connsBaseName, median(base))
	res.Extra = map[string]any{
		"wave":               connsWave,
		"failed_ours":        failed,
		"failed_baseline":    baseFailed,
		"flows_before":       before.flows,
		"flows_after":        after.flows,
		"steer_before":       before.steered,
		"steer_after":        after.steered,
		"segments_before":    before.segments,
		"segments_after":     after.segments,
		"goroutines_before":  before.goroutines,
		"goroutines_after":   after.goroutines,
		"rss_mib_before":     round2(float64(before.rss) / (1 << 20)),
		"rss_mib_after":      round2(float64(after.rss) / (1 << 20)),
		"back_to_baseline":   before.back(after) == "",
		"not_back":           before.back(after),
		"rss_slack_mib":      connsRSSSlack >> 20,
		"settle_limit_s":     connsSettle.Seconds(),
		"user_time_wait_s":   connsTimeWait.Seconds(),
		"clients_per_wave_n": connsClientsN,
	}
	return res, nil
}

// back returns "" if a's figures came back to b's, else what did not.
func (b churnFigures) back(a churnFigures) string {
	var not []string
	for _, c := range []struct {
		name          string
		before, after int
	}{{"flows", b.flows, a.flows}, {"steer", b.steered, a.steered}, {"segments", b.segments, a.segments},
		{"goroutines", b.goroutines, a.goroutines}} {
		if c.after > c.before {
			not = append(not, fmt.Sprintf("%s %d>%d", c.name, c.after, c.before))
		}
	}
	if a.rss > b.rss+connsRSSSlack {
		not = append(not, fmt.Sprintf("rss %d>%d+%d MiB", a.rss>>20, b.rss>>20, connsRSSSlack>>20))
	}
	return strings.Join(not, ", ")
}

// settle waits until the server's figures are back to before's (or, with
// before nil, until its flows are down to the listener's and the stack
// holds no connection), at most connsSettle, and returns them.
func (u *userServer) settle(before *churnFigures) (churnFigures, error) {
	deadline := time.Now().Add(connsSettle)
	for {
		f, err := u.figures()
		if err != nil {
			return f, err
		}
		done := f.flows <= 1
		if before != nil {
			done = before.back(f) == ""
		}
		if done || time.Now().After(deadline) {
			return f, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (u *userServer) figures() (churnFigures, error) {
	var f churnFigures
	runtime.GC()
	debug.FreeOSMemory()
	st, err := u.nx.Stats()
	if err != nil {
		return f, err
	}
	f.flows, f.steered = st.Flows, st.Steered
	for _, p := range st.Ports {
		f.segments += p.Pool.Segments
	}
	f.goroutines = runtime.NumGoroutine()
	f.rss, err = rssBytes()
	return f, err
}

// rssBytes returns this process's resident set size.
func rssBytes() (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS in /proc/self/status")
}

// churnCycles runs open/close cycles of connsWave connections against
// dial for d (one cycle if d is 0) and returns the connections per second
// that completed and how many failed. It fails if more than half failed.
func churnCycles(dial func() (net.Conn, error), d time.Duration) (float64, uint64, error) {
	var ok, failed atomic.Uint64
	var first atomic.Value
	fail := func(err error) {
		failed.Add(1)
		first.CompareAndSwap(nil, err.Error())
	}
	start := time.Now()
	for {
		conns := make([]net.Conn, connsWave)
		var next atomic.Int64
		var wg sync.WaitGroup
		work := func(f func(i int)) {
			next.Store(0)
			for range connsClientsN {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := int(next.Add(1) - 1); i < len(conns); i = int(next.Add(1) - 1) {
						f(i)
					}
				}()
			}
			wg.Wait()
		}
		work(func(i int) {
			c, err := dial()
			if err != nil {
				fail(err)
				return
			}
			conns[i] = c
		})
		work(func(i int) {
			c := conns[i]
			if c == nil {
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(connsDialTimout))
			if _, err := c.Write([]byte{'x'}); err != nil {
				fail(err)
				return
			}
			var b [2]byte
			if n, err := io.ReadFull(c, b[:]); n != 1 || err != io.ErrUnexpectedEOF {
				fail(fmt.Errorf("answer: %d bytes, %v", n, err))
				return
			}
			ok.Add(1)
		})
		if time.Since(start) >= d {
			break
		}
	}
	el := time.Since(start)
	if failed.Load() > ok.Load() {
		return 0, failed.Load(), fmt.Errorf("%d of %d connections failed, first: %v", failed.Load(), failed.Load()+ok.Load(), first.Load())
	}
	return float64(ok.Load()) / el.Seconds(), failed.Load(), nil
}
