package ring_test

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/skylane/skylane/internal/shm"
	"github.com/skylane/skylane/ring"
)

func TestNeedWakeupFlag(t *testing.T) {
	mem, p, c := newRing(t, 8)
	if p.NeedsWakeup() {
		t.Fatal("NeedsWakeup on a fresh ring")
	}
	c.SetNeedWakeup(true)
	if !p.NeedsWakeup() || word(mem, offFlags) != ring.FlagNeedWakeup {
		t.Fatalf("after SetNeedWakeup(true): NeedsWakeup %v, flags word %#x", p.NeedsWakeup(), word(mem, offFlags))
	}
	c.SetNeedWakeup(false)
	if p.NeedsWakeup() || word(mem, offFlags) != 0 {
		t.Fatalf("after SetNeedWakeup(false): NeedsWakeup %v, flags word %#x", p.NeedsWakeup(), word(mem, offFlags))
	}
	// Only bit 0 means "wake me"; other bits a peer may set are ignored.
	putWord(mem, offFlags, 0xFFFFFFFE)
	if p.NeedsWakeup() {
		t.Fatal("NeedsWakeup with bit 0 clear")
	}
	putWord(mem, offFlags, 0x80000001)
	if !p.NeedsWakeup() {
		t.Fatal("NeedsWakeup false with bit 0 set")
	}
	// Setting the flag does not disturb the indices.
	if word(mem, offProd) != 0 || word(mem, offCons) != 0 {
		t.Fatal("flags write touched an index")
	}
}

// TestNeedWakeupProtocol runs the documented sleep protocol over an eventfd:
// set the flag, peek again, then wait; the producer signals after Commit only
// when asked. No wake-up may be lost (the wait would time out).
func TestNeedWakeupProtocol(t *testing.T) {
	const total = 2000
	_, p, c := newRing(t, 64)
	efd, err := shm.NewEventFD()
	if err != nil {
		t.Fatal(err)
	}
	defer efd.Close()

	errc := make(chan error, 1)
	var sleeps int
	var stop atomic.Bool // a failed consumer stops the producer
	go func() {
		defer stop.Store(true)
		out := make([]ring.Slot, 16)
		for got := uint32(0); got < total; {
			n, err := c.Dequeue(out)
			if err != nil {
				errc <- err
				return
			}
			for i := range n {
				if out[i] != seqSlot(got) {
					errc <- fmt.Errorf("slot %d = %+v", got, out[i])
					return
				}
				got++
			}
			if n > 0 {
				continue
			}
			c.SetNeedWakeup(true)
			if n, _ := c.Peek(1); n > 0 { // a commit raced with the flag
				c.SetNeedWakeup(false)
				continue
			}
			sleeps++
			if _, err := efd.Wait(10 * time.Second); err != nil {
				errc <- fmt.Errorf("wait after %d slots: %w (lost wake-up)", got, err)
				return
			}
			c.SetNeedWakeup(false)
		}
		errc <- nil
	}()

	var signals int
	for sent := uint32(0); sent < total && !stop.Load(); {
		burst := []ring.Slot{seqSlot(sent), seqSlot(sent + 1), seqSlot(sent + 2), seqSlot(sent + 3)}
		n, err := p.Enqueue(burst)
		if err != nil {
			t.Fatal(err)
		}
		sent += uint32(n)
		if n > 0 && p.NeedsWakeup() {
			signals++
			if err := efd.Signal(); err != nil {
				t.Fatal(err)
			}
		}
		if sent%64 == 0 {
			time.Sleep(50 * time.Microsecond) // let the consumer go to sleep
		} else {
			runtime.Gosched()
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if sleeps == 0 || signals == 0 {
		t.Fatalf("the consumer slept %d times and was signalled %d times; the sleep path was not exercised", sleeps, signals)
	}
	t.Logf("%d slots, %d sleeps, %d signals", total, sleeps, signals)
}

func TestNeedRoomFlag(t *testing.T) {
	mem, p, c := newRing(t, 8)
	if c.NeedsRoom() {
		t.Fatal("NeedsRoom on a fresh ring")
	}
	p.SetNeedRoom(true)
	if !c.NeedsRoom() || word(mem, offPFlags) != ring.FlagNeedRoom {
		t.Fatalf("after SetNeedRoom(true): NeedsRoom %v, producer flags word %#x", c.NeedsRoom(), word(mem, offPFlags))
	}
	if p.NeedsWakeup() || word(mem, offFlags) != 0 {
		t.Fatal("SetNeedRoom touched the consumer's flags")
	}
	p.SetNeedRoom(false)
	if c.NeedsRoom() || word(mem, offPFlags) != 0 {
		t.Fatalf("after SetNeedRoom(false): NeedsRoom %v, producer flags word %#x", c.NeedsRoom(), word(mem, offPFlags))
	}
	// Only bit 0 means "wake me"; other bits a peer may set are ignored.
	putWord(mem, offPFlags, 0xFFFFFFFE)
	if c.NeedsRoom() {
		t.Fatal("NeedsRoom with bit 0 clear")
	}
	putWord(mem, offPFlags, 0x80000001)
	if !c.NeedsRoom() {
		t.Fatal("NeedsRoom false with bit 0 set")
	}
	// The flag shares the producer's cache line but not its index.
	if word(mem, offProd) != 0 || word(mem, offCons) != 0 {
		t.Fatal("flags write touched an index")
	}
	if n, err := p.Enqueue([]ring.Slot{seqSlot(0)}); n != 1 || err != nil || word(mem, offPFlags) != 0x80000001 {
		t.Fatalf("Enqueue = %d, %v; producer flags %#x", n, err, word(mem, offPFlags))
	}
}

// TestNeedRoomProtocol is TestNeedWakeupProtocol the other way round: the
// producer fills a small ring, sets FlagNeedRoom, reserves again, then
// waits; the consumer signals after Release only when asked. No wake-up may
// be lost (the wait would time out).
func TestNeedRoomProtocol(t *testing.T) {
	const total = 2000
	_, p, c := newRing(t, 8)
	efd, err := shm.NewEventFD()
	if err != nil {
		t.Fatal(err)
	}
	defer efd.Close()

	errc := make(chan error, 1)
	var sleeps int
	var stop atomic.Bool // a failed producer stops the consumer
	go func() {
		defer stop.Store(true)
		for sent := uint32(0); sent < total; {
			burst := []ring.Slot{seqSlot(sent), seqSlot(sent + 1), seqSlot(sent + 2)}
			n, err := p.Enqueue(burst)
			if err != nil {
				errc <- err
				return
			}
			sent += uint32(n)
			if n > 0 {
				continue
			}
			p.SetNeedRoom(true)
			if k, _ := p.Reserve(1); k > 0 { // a release raced with the flag
				p.SetNeedRoom(false)
				continue
			}
			sleeps++
			if _, err := efd.Wait(10 * time.Second); err != nil {
				errc <- fmt.Errorf("wait after %d slots: %w (lost wake-up)", sent, err)
				return
			}
			p.SetNeedRoom(false)
		}
		errc <- nil
	}()

	var signals int
	out := make([]ring.Slot, 3)
	for got := uint32(0); got < total && !stop.Load(); {
		n, err := c.Dequeue(out)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if out[i] != seqSlot(got) {
				t.Fatalf("slot %d = %+v", got, out[i])
			}
			got++
		}
		if n > 0 && c.NeedsRoom() {
			signals++
			if err := efd.Signal(); err != nil {
				t.Fatal(err)
			}
		}
		if got%64 == 0 {
			time.Sleep(50 * time.Microsecond) // let the producer fill the ring and sleep
		} else {
			runtime.Gosched()
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if sleeps == 0 || signals == 0 {
		t.Fatalf("the producer slept %d times and was signalled %d times; the sleep path was not exercised", sleeps, signals)
	}
	t.Logf("%d slots, %d sleeps, %d signals", total, sleeps, signals)
}

// TestConcurrentSequence moves a million slots between two goroutines in
// batches of varying size and checks every sequence number (run with -race:
// the slot writes must be ordered before the index store that publishes them).
func TestConcurrentSequence(t *testing.T) {
	const total = 1_000_000
	const size = 256
	_, p, c := newRing(t, size)
	var wg sync.WaitGroup
	var perr, cerr error
	var stop atomic.Bool // a failed consumer stops the producer
	// A broken ring shows as no progress: fail then rather than hang.
	deadline := time.Now().Add(time.Minute)
	stuck := func(side string, at uint32) error {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s stuck at slot %d", side, at)
		}
		return nil
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		for sent, b := uint32(0), 0; sent < total; b++ {
			want := min(1+b%97, total-int(sent)) // 1..97: batches that straddle the end
			k, err := p.Reserve(want)
			if err != nil {
				perr = err
				return
			}
			if k == 0 {
				if stop.Load() {
					return
				}
				if perr = stuck("producer", sent); perr != nil {
					return
				}
				runtime.Gosched()
				continue
			}
			for i := range k {
				p.Set(i, seqSlot(sent+uint32(i)))
			}
			p.Commit(k)
			sent += uint32(k)
		}
	}()
	go func() {
		defer wg.Done()
		defer stop.Store(true)
		for got, b := uint32(0), 0; got < total; b++ {
			k, err := c.Peek(1 + b%61)
			if err != nil {
				cerr = err
				return
			}
			if k == 0 {
				if cerr = stuck("consumer", got); cerr != nil {
					return
				}
				runtime.Gosched()
				continue
			}
			for i := range k {
				if s := c.At(i); s != seqSlot(got+uint32(i)) {
					cerr = fmt.Errorf("slot %d = %+v, want %+v", got+uint32(i), s, seqSlot(got+uint32(i)))
					return
				}
			}
			c.Release(k)
			got += uint32(k)
		}
	}()
	wg.Wait()
	if perr != nil || cerr != nil {
		t.Fatalf("producer: %v; consumer: %v", perr, cerr)
	}
	if n, err := c.Peek(1); n != 0 || err != nil {
		t.Fatalf("Peek after all = %d, %v", n, err)
	}
	if err := p.Refresh(); err != nil || p.Pending() != 0 {
		t.Fatalf("Refresh = %v, Pending %d", err, p.Pending())
	}
	if errors.Is(p.Err(), ring.ErrCorrupt) || errors.Is(c.Err(), ring.ErrCorrupt) {
		t.Fatal("ErrCorrupt on a well-behaved pair")
	}
}
