package client_test

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/nexus"
)

// lossRun is a batch of TCP echoes over a lossy memif wire between two
// stacks: each transfer sends size bytes to an echo server and checks every
// byte that comes back.
type lossRun struct {
	transfers int   // echoes in all
	parallel  int   // at a time
	size      int   // bytes each way per echo
	rate      int64 // the wire's rate, bits per second each way
	queue     int   // the wire's queue, frames each way; 0: lossQueue
	loss      memif.Loss
}

// The loss the tests put on the wire: 1 frame in 4000 lost on its own,
// and 1 in 20000 starting a burst of 16 lost frames: about 0.1% of the
// frames, in both directions, in the stacks' data and ACKs alike.
var testLoss = memif.Loss{Rate: 0.00025, BurstRate: 0.00005, BurstLen: 16}

// lossQueue is the wire's queue, in frames: 256 frames of 1518 bytes are
// 31 ms at 100 Mbit/s, so tail drops add to the loss when TCP overfills it.
const lossQueue = 256

// recoveryAllowance is what the bound of a transfer grants beyond the wire
// time: five retransmission timeouts in a row from netstack's 200 ms
// minimum (0.2+0.4+0.8+1.6+3.2 s). A transfer that collapses to a few
// packets per second takes minutes.
const recoveryAllowance = 6200 * time.Millisecond

// slowdown is how much slower than its share of the wire a transfer may
// run: TCP under the test loss (Mathis: about 15 Mbit/s at a 30 ms RTT),
// with the race detector, on a busy 2-core machine, stays within it; a
// collapse to tens of packets a second is a hundred times slower.
const slowdown = 16

// bound is how long one transfer may take: slowdown times its share of the
// wire (the transfers running at once share it), plus the recovery
// allowance.
func (r lossRun) bound() time.Duration {
	wire := time.Duration(float64(r.size*8*r.parallel) / float64(r.rate) * float64(time.Second))
	return slowdown*wire + recoveryAllowance
}

// TestTCPLoss: TCP echoes of 32 MiB over a wire that loses frames at
// random and in bursts all arrive whole, each within a bound derived from
// the wire rate: none stalls. The soak (make soak) runs many more.
func TestTCPLoss(t *testing.T) {
	lossRun{transfers: 2, parallel: 2, size: 32 << 20, rate: 100_000_000,
		loss: withSeed(testLoss, 1)}.run(t)
}

// TestTCPLossSoak is TestTCPLoss at length: set SKYLANE_SOAK=1 (make soak).
func TestTCPLossSoak(t *testing.T) {
	if os.Getenv("SKYLANE_SOAK") != "1" {
		t.Skip("the soak: set SKYLANE_SOAK=1, or run make soak")
	}
	for seed := uint64(1); seed <= 16; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			lossRun{transfers: 8, parallel: 2, size: 32 << 20, rate: 400_000_000,
				loss: withSeed(testLoss, seed)}.run(t)
		})
	}
	// No loss but tail drops: a short queue on a fast wire, which TCP
	// overfills in bursts.
	for i := range 4 {
		t.Run(fmt.Sprintf("taildrop/%d", i), func(t *testing.T) {
			lossRun{transfers: 8, parallel: 2, size: 32 << 20, rate: 1_000_000_000, queue: 128}.run(t)
		})
	}
}

func withSeed(l memif.Loss, seed uint64) memif.Loss {
	l.Seed = seed
	return l
}

func (r lossRun) run(t *testing.T) {
	w := newWorldOn(t, nexus.Options{}, memif.Options{Name: "loss", QueueLen: cmp.Or(r.queue, lossQueue), Rate: r.rate, Loss: r.loss})
	ln, err := w.sa.Listen("tcp", "198.18.0.1:7")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	echoServer(t, ln)
	defer heartbeat(t, w)()

	// One random pattern; each transfer starts at its own offset in it.
	const stride = 4099
	pattern := make([]byte, r.size+r.transfers*stride)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range pattern {
		pattern[i] = byte(rng.Uint32())
	}
	bound := r.bound()
	sem := make(chan struct{}, r.parallel)
	errs := make(chan error, r.transfers)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range r.transfers {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			d, err := echoCheck(w, pattern[i*stride:][:r.size], bound)
			if err != nil {
				errs <- fmt.Errorf("transfer %d: %w after %v", i, err, d)
				return
			}
			t.Logf("transfer %d: %v (%.0f Mbit/s each way)", i, d.Round(time.Millisecond), float64(r.size*8)/d.Seconds()/1e6)
		}()
	}
	wg.Wait()
	close(errs)
	stalls := 0
	for err := range errs {
		stalls++
		t.Error(err)
	}
	if stalls > 0 {
		t.Errorf("%d of %d transfers stalled (bound %v each, wire %d Mbit/s, loss %+v)", stalls, r.transfers, bound, r.rate/1e6, r.loss)
		t.Logf("a: %+v", w.sa.Endpoint().Stats())
		t.Logf("b: %+v", w.sb.Endpoint().Stats())
	}
	t.Logf("%d transfers of %d MiB in %v; retracted-window ACKs taken: a %d, b %d", r.transfers, r.size>>20,
		time.Since(start).Round(time.Millisecond), w.sa.Endpoint().Stats().RxRetractedACKs, w.sb.Endpoint().Stats().RxRetractedACKs)
}

// echoCheck sends msg through the echo server and checks every byte comes back
// in order, within bound.
func echoCheck(w *world, msg []byte, bound time.Duration) (time.Duration, error) {
	start := time.Now()
	c, err := w.sb.Dial("tcp", "198.18.0.1:7")
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(start.Add(bound))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		werr <- err
	}()
	buf := make([]byte, 64<<10)
	for off := 0; off < len(msg); {
		n := min(len(buf), len(msg)-off)
		if _, err := io.ReadFull(c, buf[:n]); err != nil {
			c.Close() // unblocks the writer
			<-werr
			return time.Since(start), fmt.Errorf("read at byte %d of %d: %w", off, len(msg), err)
		}
		if !bytes.Equal(buf[:n], msg[off:off+n]) {
			c.Close()
			<-werr
			return time.Since(start), fmt.Errorf("bytes %d..%d differ", off, off+n)
		}
		off += n
	}
	if err := <-werr; err != nil {
		return time.Since(start), fmt.Errorf("write: %w", err)
	}
	return time.Since(start), nil
}

// heartbeat keeps a datagram a millisecond crossing the wire each way, as
// other traffic would on a real link, until the returned stop is called.
// memif's bursts are counted in frames: on a wire that only carries one
// stalled connection's retransmissions, a 16-frame burst would swallow 16
// retransmissions in a row, minutes of backoff, however healthy the stack.
func heartbeat(t *testing.T, w *world) (stop func()) {
	t.Helper()
	srv, err := w.sa.ListenPacket("udp", "198.18.0.1:9")
	if err != nil {
		t.Fatal(err)
	}
	c, err := w.sb.Dial("udp", "198.18.0.1:9")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		udpEcho(srv)
	}()
	go func() { // the replies, drained
		defer wg.Done()
		buf := make([]byte, 64)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				c.Write([]byte("beat"))
			}
		}
	}()
	return func() {
		close(done)
		c.Close()
		srv.Close()
		wg.Wait()
	}
}

// udpEcho sends every datagram pc reads back to where it came from, until
// pc is closed.
func udpEcho(pc net.PacketConn) {
	buf := make([]byte, 2048)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		pc.WriteTo(buf[:n], from)
	}
}
