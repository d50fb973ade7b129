package client_test

import (
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/pool"
)

// churnConns is the number of connections TestChurn opens and closes
// (10,000), churnWorkers how many are open at once: well under a port's
// 512 flows, so flows waiting for the reaper never fill it.
const (
	churnConns   = 10000
	churnWorkers = 32
)

// TestChurn opens and closes 10,000 TCP connections between two stacks
// (a 1-byte request, a 1-byte answer, the server closes) and then shows
// that the flows, the pools and the goroutines are back at their baseline:
// only the listener's flow is left, the endpoints hold no buffer, the pools
// have only the alloc rings' hand-ahead out and give idle segments back,
// and no goroutine was left behind.
func TestChurn(t *testing.T) {
	w := newWorldWith(t, nexus.Options{
		ReapInterval: 20 * time.Millisecond,
		Channel:      channel.Options{Pool: pool.Options{IdleTimeout: 50 * time.Millisecond}},
	})
	ln, err := w.sa.Listen("tcp4", ":80")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var served sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			served.Add(1)
			go func() {
				defer served.Done()
				defer c.Close()
				var b [1]byte
				if _, err := io.ReadFull(c, b[:]); err == nil {
					c.Write(b[:])
				}
			}()
		}
	}()
	one := func() error {
		c, err := w.sb.Dial("tcp4", "198.18.0.1:80")
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte{'x'}); err != nil {
			return err
		}
		var b [2]byte
		if n, err := io.ReadFull(c, b[:]); n != 1 || err != io.ErrUnexpectedEOF {
			return &net.OpError{Op: "read", Err: err}
		}
		return nil
	}
	// Warm up: pools, rings and netstack's processors exist from here on.
	if err := one(); err != nil {
		t.Fatal(err)
	}
	settled := func() bool {
		return nexusFlows(t, w.na) == 1 && nexusFlows(t, w.nb) == 0 &&
			w.sa.Endpoint().Held() == 0 && w.sb.Endpoint().Held() == 0
	}
	eventually(t, 10*time.Second, "the warm-up connection's flows to go", settled)
	served.Wait()
	baseG := runtime.NumGoroutine()
	baseA, baseB := portStats(t, w.na), portStats(t, w.nb)

	start := time.Now()
	var next, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range churnWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= churnConns {
				if err := one(); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d connections failed, first: %v", n, churnConns, firstErr.Load())
	}
	t.Logf("%d connections opened and closed in %v (%.0f/s)", churnConns, elapsed, churnConns/elapsed.Seconds())

	eventually(t, 10*time.Second, "flows back to the listener's only", settled)
	served.Wait()
	eventually(t, 10*time.Second, "goroutines back at the baseline", func() bool { return runtime.NumGoroutine() <= baseG })
	for _, h := range []struct {
		name string
		n    *nexus.Nexus
		base nexus.PortStats
	}{{"A", w.na, baseA}, {"B", w.nb, baseB}} {
		var ps nexus.PortStats
		bps := h.base.Pool.BuffersTotal / max(h.base.Pool.Segments, 1)
		// Every segment with all its buffers free goes back to the OS
		// (down to the minimum). Segments still holding a buffer stay:
		// buffers parked in an idle app's alloc ring can pin a few, so
		// the count is not tied to InUse.
		eventually(t, 10*time.Second, "idle pool segments reaped", func() bool {
			ps = portStats(t, h.n)
			return ps.Pool.FreeSegments == 0 || ps.Pool.Segments <= 1
		})
		if fit := (ps.InUse+bps-1)/bps + 1; ps.Pool.Segments > fit {
			t.Logf("host %s: %d segments hold %d buffers (%d would fit): alloc-ring buffers pin segments", h.name, ps.Pool.Segments, ps.InUse, fit)
		}
		if ps.InUse > channel.DefaultAllocSize {
			t.Errorf("host %s: %d buffers out of the pool, more than the alloc ring holds (%d)", h.name, ps.InUse, channel.DefaultAllocSize)
		}
		if ps.Flows != h.base.Flows {
			t.Errorf("host %s: port holds %d flows, %d at the baseline", h.name, ps.Flows, h.base.Flows)
		}
		t.Logf("host %s pool: baseline %d segments / %d out, after %d segments / %d out (peak %d grows, %d releases)",
			h.name, h.base.Pool.Segments, h.base.InUse, ps.Pool.Segments, ps.InUse, ps.Pool.Grows, ps.Pool.Releases)
	}
	sa, sb := w.sa.Endpoint().Stats(), w.sb.Endpoint().Stats()
	t.Logf("server: %d flows registered on demand, %d reaped; client: %d registered, %d reaped; goroutines %d (baseline %d)",
		sa.FlowsAuto, sa.FlowsReaped, sb.FlowsRegistered, sb.FlowsReaped, runtime.NumGoroutine(), baseG)
}

func portStats(t testing.TB, n *nexus.Nexus) nexus.PortStats {
	t.Helper()
	st, err := n.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Ports) != 1 {
		t.Fatalf("%d ports, want 1", len(st.Ports))
	}
	return st.Ports[0]
}
