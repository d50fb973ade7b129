package memif_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/packet"
)

// TestMain fails the run if a test leaves goroutines behind: memif starts
// none, so every goroutine a test starts must have ended.
func TestMain(m *testing.M) {
	before := runtime.NumGoroutine()
	code := m.Run()
	// Under -fuzz the fuzzing engine's own goroutines outlive m.Run.
	if fz := flag.Lookup("test.fuzz"); code == 0 && (fz == nil || fz.Value.String() == "") {
		deadline := time.Now().Add(2 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			fmt.Fprintf(os.Stderr, "leaked %d goroutines\n", n-before)
			code = 1
		}
	}
	os.Exit(code)
}

func newPair(t testing.TB, o memif.Options) (netif.Link, netif.Link) {
	t.Helper()
	a, b, err := memif.NewPair(o)
	if err != nil {
		t.Fatalf("NewPair(%+v): %v", o, err)
	}
	t.Cleanup(func() { a.Close() })
	return a, b
}

// bufsFor returns n caller-owned read buffers of MaxFrameLen bytes.
func bufsFor(l netif.Link, n int) ([][]byte, []int) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, netif.MaxFrameLen(l.MTU(), l.LinkType()))
	}
	return bufs, make([]int, n)
}

// frame returns a frame of size bytes (at least 8) carrying seq in its first
// 8 bytes and a pattern derived from seq after it.
func frame(seq uint64, size int) []byte {
	f := make([]byte, size)
	binary.LittleEndian.PutUint64(f, seq)
	for i := 8; i < size; i++ {
		f[i] = byte(seq) + byte(i)
	}
	return f
}

func TestNewPairOptions(t *testing.T) {
	a, b := newPair(t, memif.Options{})
	if a.Name() != "memif0" || b.Name() != "memif1" {
		t.Errorf("names %q %q, want memif0 memif1", a.Name(), b.Name())
	}
	if a.MTU() != 1500 || a.LinkType() != packet.Ethernet || a.BatchSize() != 32 {
		t.Errorf("defaults: MTU %d, LinkType %d, BatchSize %d", a.MTU(), a.LinkType(), a.BatchSize())
	}
	if got := netif.MaxFrameLen(a.MTU(), a.LinkType()); got != 1518 {
		t.Errorf("MaxFrameLen = %d, want 1518", got)
	}
	small, _ := newPair(t, memif.Options{QueueLen: 4, LinkType: packet.RawIP, MTU: 9000})
	if small.BatchSize() != 4 || small.MTU() != 9000 || small.LinkType() != packet.RawIP {
		t.Errorf("small pair: BatchSize %d, MTU %d, LinkType %d", small.BatchSize(), small.MTU(), small.LinkType())
	}

	for _, o := range []memif.Options{
		{MTU: 67},                       // below the IPv4 minimum
		{MTU: 65536},                    // beyond a 16-bit IP length
		{LinkType: 3},                   // no such framing
		{QueueLen: -1},                  // negative
		{Rate: -1},                      // negative
		{Burst: -1},                     // negative
		{Delay: -time.Second},           // negative
		{MTU: 65535, QueueLen: 1 << 15}, // 2 GiB per direction
	} {
		if _, _, err := memif.NewPair(o); err == nil {
			t.Errorf("NewPair(%+v) succeeded", o)
		}
	}
}

// TestOrder moves frames of varied sizes both ways in batches of varied
// sizes, and checks every frame arrives whole and in order.
func TestOrder(t *testing.T) {
	a, b := newPair(t, memif.Options{QueueLen: 64})
	for _, dir := range []struct{ w, r netif.Link }{{a, b}, {b, a}} {
		bufs, sizes := bufsFor(dir.r, 64)
		var sent, recv uint64
		var bytesSent uint64
		for round := range 200 {
			batch := make([][]byte, 1+round%64)
			for i := range batch {
				batch[i] = frame(sent+uint64(i), 8+int(sent+uint64(i))*7%1511)
				bytesSent += uint64(len(batch[i]))
			}
			n, err := dir.w.Write(batch)
			if err != nil || n != len(batch) {
				t.Fatalf("Write(%d frames) = %d, %v", len(batch), n, err)
			}
			sent += uint64(n)
			// Read with a batch size unrelated to the write's.
			for recv < sent {
				n, err := dir.r.Read(bufs[:1+round%13], sizes)
				if err != nil || n == 0 {
					t.Fatalf("Read = %d, %v with %d frames queued", n, err, sent-recv)
				}
				for i := range n {
					want := frame(recv, 8+int(recv)*7%1511)
					if !bytes.Equal(bufs[i][:sizes[i]], want) {
						t.Fatalf("frame %d: got %d bytes seq %d, want %d bytes",
							recv, sizes[i], binary.LittleEndian.Uint64(bufs[i]), len(want))
					}
					recv++
				}
			}
		}
		if n, err := dir.r.Read(bufs, sizes); n != 0 || err != nil {
			t.Errorf("Read on an empty queue = %d, %v", n, err)
		}
		ws, rs := dir.w.Stats(), dir.r.Stats()
		want := netif.Stats{TxPackets: sent, TxBytes: bytesSent}
		if got := (netif.Stats{TxPackets: ws.TxPackets, TxBytes: ws.TxBytes, TxDrops: ws.TxDrops}); got != want {
			t.Errorf("writer stats %+v, want %+v", ws, want)
		}
		if rs.RxPackets != sent || rs.RxBytes != bytesSent || rs.RxDrops != 0 {
			t.Errorf("reader stats %+v, want %d packets %d bytes", rs, sent, bytesSent)
		}
	}
}

// TestTailDrop fills an 8-frame queue with 20 frames: the first 8 are kept,
// exactly the 12 after them are dropped and counted.
func TestTailDrop(t *testing.T) {
	a, b := newPair(t, memif.Options{QueueLen: 8})
	batch := make([][]byte, 20)
	for i := range batch {
		batch[i] = frame(uint64(i), 64)
	}
	n, err := a.Write(batch)
	if n != 8 || err != nil {
		t.Fatalf("Write(20) on an 8-frame queue = %d, %v; want 8, nil", n, err)
	}
	if n, err := a.Write(batch[:3]); n != 0 || err != nil {
		t.Fatalf("Write on a full queue = %d, %v; want 0, nil", n, err)
	}
	if s := a.Stats(); s.TxPackets != 8 || s.TxDrops != 15 || s.TxBytes != 8*64 {
		t.Errorf("stats %+v, want 8 packets, 512 bytes, 15 drops", s)
	}
	bufs, sizes := bufsFor(b, 32)
	n, err = b.Read(bufs, sizes)
	if n != 8 || err != nil {
		t.Fatalf("Read = %d, %v; want 8", n, err)
	}
	for i := range n {
		if !bytes.Equal(bufs[i][:sizes[i]], batch[i]) {
			t.Errorf("frame %d differs", i)
		}
	}
	// Room again: the queue wraps.
	if n, err := a.Write(batch[8:20]); n != 8 || err != nil {
		t.Fatalf("Write after drain = %d, %v; want 8", n, err)
	}
	n, _ = b.Read(bufs, sizes)
	for i := range n {
		if !bytes.Equal(bufs[i][:sizes[i]], batch[8+i]) {
			t.Errorf("wrapped frame %d differs", i)
		}
	}
}

// TestFrameTooLarge: a frame of MaxFrameLen crosses; one byte more stops the
// batch with ErrFrameTooLarge, after the frames before it, and is not a drop.
func TestFrameTooLarge(t *testing.T) {
	for _, lt := range []packet.LinkType{packet.Ethernet, packet.RawIP} {
		a, b := newPair(t, memif.Options{MTU: 1280, LinkType: lt})
		max := netif.MaxFrameLen(1280, lt)
		batch := [][]byte{frame(0, max), frame(1, max+1), frame(2, 64)}
		n, err := a.Write(batch)
		if n != 1 || !errors.Is(err, netif.ErrFrameTooLarge) {
			t.Fatalf("link type %d: Write = %d, %v; want 1, ErrFrameTooLarge", lt, n, err)
		}
		if s := a.Stats(); s.TxPackets != 1 || s.TxDrops != 0 {
			t.Errorf("stats %+v, want 1 packet and no drop", s)
		}
		bufs, sizes := bufsFor(b, 4)
		if n, _ := b.Read(bufs, sizes); n != 1 || sizes[0] != max {
			t.Errorf("Read = %d frames, first %d bytes; want 1 of %d", n, sizes[0], max)
		}
	}
}

// TestSuperPacket: at MTU 65535 a whole GSO-sized packet crosses.
func TestSuperPacket(t *testing.T) {
	a, b := newPair(t, memif.Options{MTU: memif.MaxMTU, LinkType: packet.RawIP, QueueLen: 4})
	f := frame(7, 65535)
	if n, err := a.Write([][]byte{f}); n != 1 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	bufs, sizes := bufsFor(b, 1)
	if n, err := b.Read(bufs, sizes); n != 1 || err != nil || !bytes.Equal(bufs[0][:sizes[0]], f) {
		t.Fatalf("Read = %d, %v, %d bytes", n, err, sizes[0])
	}
}

// TestShortBuffer: a read buffer shorter than the frame drops the frame,
// counts it, and says so; the next frame is read normally.
func TestShortBuffer(t *testing.T) {
	a, b := newPair(t, memif.Options{})
	a.Write([][]byte{frame(0, 64), frame(1, 1000), frame(2, 64)})
	bufs := [][]byte{make([]byte, 100), make([]byte, 100)}
	sizes := make([]int, 2)
	n, err := b.Read(bufs, sizes)
	if n != 1 || !errors.Is(err, io.ErrShortBuffer) {
		t.Fatalf("Read = %d, %v; want 1, io.ErrShortBuffer", n, err)
	}
	if s := b.Stats(); s.RxDrops != 1 || s.RxPackets != 1 {
		t.Errorf("stats %+v, want 1 packet 1 drop", s)
	}
	n, err = b.Read(bufs, sizes)
	if n != 1 || err != nil || binary.LittleEndian.Uint64(bufs[0]) != 2 {
		t.Fatalf("Read after drop = %d, %v", n, err)
	}
}

func TestWait(t *testing.T) {
	a, b := newPair(t, memif.Options{})
	// Nothing queued: Wait(0) polls, a timeout returns nil once it passes.
	if err := b.Wait(0); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := b.Wait(20 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Errorf("Wait(20ms) returned after %v", d)
	}
	// A write wakes a Wait with no limit.
	got := make(chan error)
	go func() {
		err := b.Wait(-1)
		if err == nil {
			bufs, sizes := bufsFor(b, 1)
			if n, _ := b.Read(bufs, sizes); n != 1 {
				err = fmt.Errorf("woken, but Read returned %d frames", n)
			}
		}
		got <- err
	}()
	time.Sleep(5 * time.Millisecond) // let it block; the test holds without this
	a.Write([][]byte{frame(0, 64)})
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	// Frames already queued: Wait returns at once.
	a.Write([][]byte{frame(1, 64)})
	if err := b.Wait(-1); err != nil {
		t.Fatal(err)
	}
}

// TestClose: Close unblocks a blocked Wait, and both ends then refuse
// everything with ErrClosed.
func TestClose(t *testing.T) {
	a, b, err := memif.NewPair(memif.Options{})
	if err != nil {
		t.Fatal(err)
	}
	a.Write([][]byte{frame(0, 64)})
	waiting := make(chan error)
	go func() { waiting <- a.Wait(-1) }() // a's queue is empty: blocks
	time.Sleep(5 * time.Millisecond)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-waiting:
		if !errors.Is(err, netif.ErrClosed) {
			t.Errorf("Wait = %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Wait")
	}
	for _, l := range []netif.Link{a, b} {
		bufs, sizes := bufsFor(l, 1)
		if _, err := l.Read(bufs, sizes); !errors.Is(err, netif.ErrClosed) {
			t.Errorf("%s: Read = %v", l.Name(), err)
		}
		if _, err := l.Write([][]byte{frame(0, 64)}); !errors.Is(err, netif.ErrClosed) {
			t.Errorf("%s: Write = %v", l.Name(), err)
		}
		if err := l.Wait(-1); !errors.Is(err, netif.ErrClosed) {
			t.Errorf("%s: Wait = %v", l.Name(), err)
		}
		if err := l.Close(); err != nil {
			t.Errorf("%s: second Close = %v", l.Name(), err)
		}
	}
}

// TestCloseRace closes the wire from a third goroutine while a writer and a
// reader on each end run flat out; all four must stop with ErrClosed.
func TestCloseRace(t *testing.T) {
	for range 20 {
		a, b, err := memif.NewPair(memif.Options{QueueLen: 64})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		for _, l := range []netif.Link{a, b} {
			wg.Add(2)
			go func() {
				defer wg.Done()
				batch := [][]byte{frame(0, 64), frame(1, 64)}
				for {
					if _, err := l.Write(batch); err != nil {
						errs <- err
						return
					}
					runtime.Gosched()
				}
			}()
			go func() {
				defer wg.Done()
				bufs, sizes := bufsFor(l, 8)
				for {
					if err := l.Wait(-1); err != nil {
						errs <- err
						return
					}
					if _, err := l.Read(bufs, sizes); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		time.Sleep(time.Millisecond)
		go a.Close()
		b.Close()
		wg.Wait()
		close(errs)
		for err := range errs {
			if !errors.Is(err, netif.ErrClosed) {
				t.Fatalf("stopped with %v, want ErrClosed", err)
			}
		}
	}
}

// TestConcurrent moves 1e6 frames from a writer goroutine to a reader
// goroutine. The writer resends what a full queue dropped, so the reader
// must see every sequence number exactly once, in order.
func TestConcurrent(t *testing.T) {
	total := uint64(1_000_000)
	if testing.Short() {
		total = 100_000
	}
	a, b := newPair(t, memif.Options{QueueLen: 256, MTU: 1280, LinkType: packet.RawIP})
	const batch = 32
	done := make(chan error)
	go func() {
		bufs, sizes := bufsFor(b, batch)
		var next uint64
		for next < total {
			if err := b.Wait(time.Second); err != nil {
				done <- err
				return
			}
			n, err := b.Read(bufs, sizes)
			if err != nil {
				done <- err
				return
			}
			for i := range n {
				seq := binary.LittleEndian.Uint64(bufs[i])
				if seq != next || sizes[i] != 8+int(seq%64) {
					done <- fmt.Errorf("got seq %d (%d bytes), want %d", seq, sizes[i], next)
					return
				}
				next++
			}
		}
		done <- nil
	}()

	frames := make([][]byte, batch)
	store := make([][72]byte, batch)
	var sent, resent uint64
	for sent < total {
		m := int(min(batch, total-sent))
		for i := range m {
			seq := sent + uint64(i)
			binary.LittleEndian.PutUint64(store[i][:], seq)
			frames[i] = store[i][:8+seq%64]
		}
		n, err := a.Write(frames[:m])
		if err != nil {
			t.Fatal(err)
		}
		if n < m {
			resent += uint64(m - n)
			runtime.Gosched()
		}
		sent += uint64(n)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	as, bs := a.Stats(), b.Stats()
	if as.TxPackets != total || as.TxDrops != resent || bs.RxPackets != total {
		t.Errorf("stats a %+v b %+v; want %d packets, %d drops", as, bs, total, resent)
	}
	t.Logf("%d frames, %d tail drops resent", total, resent)
}

// TestRate fills a 20 Mbit/s direction with 1000-byte frames in one Write
// and counts what a reader gets over the next ~300 ms: the bit rate must be
// within ±20% of the configured one. Due times are fixed at Write, so a
// late reader only delays the reading, not the count, and the count is
// judged against the times that bracket it, so that a reader or writer the
// host delays cannot fail it: every frame due when the last read began was
// read (the due times start at the latest when Write returned), and none
// read was due after it ended (they start at the earliest when Write
// began). The rate is low enough that even a loaded host writes far
// faster than the wire drains (a frame in 400 µs; Write took up to 80 µs
// per frame with -race under a load average of 10).
func TestRate(t *testing.T) {
	const (
		rate   = 20_000_000 // bits per second: 2500 frames of 1000 bytes
		size   = 1000
		window = 300 * time.Millisecond
	)
	a, b := newPair(t, memif.Options{QueueLen: 2048, Rate: rate, LinkType: packet.RawIP})
	frames := make([][]byte, 2048) // 819 ms of traffic: more than the window
	for i := range frames {
		frames[i] = frame(uint64(i), size)
	}
	start := time.Now()
	if n, err := a.Write(frames); n != len(frames) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	wrote := time.Since(start)
	bufs, sizes := bufsFor(b, 256)
	var got int
	var began, ended time.Duration // around the last reading, since start
	for began-wrote < window && got < len(frames) {
		if err := b.Wait(window); err != nil {
			t.Fatal(err)
		}
		began = time.Since(start)
		for {
			n, err := b.Read(bufs, sizes)
			if err != nil {
				t.Fatal(err)
			}
			got += n
			if n < len(bufs) {
				break
			}
		}
		ended = time.Since(start)
	}
	bits := float64(got * size * 8)
	// The bucket's depth (the default Burst: a frame) may leave at once.
	burst := float64(netif.MaxFrameLen(b.MTU(), b.LinkType())) * 8
	low := min(float64(len(frames)*size*8), 0.8*rate*(began-wrote).Seconds())
	high := 1.2*rate*ended.Seconds() + burst
	t.Logf("%d frames in %v (Write took %v): %.1f Mbit/s, configured %d", got, ended, wrote, bits/ended.Seconds()/1e6, rate/1_000_000)
	if bits < low || bits > high {
		t.Errorf("delivered %.0f bits, want %d Mbit/s ±20%%: between %.0f (due %v after Write returned) and %.0f (%v after it began)",
			bits, rate/1_000_000, low, began-wrote, high, ended)
	}
}

// TestDelay: a frame is not readable before Delay has passed since its
// Write, on the monotonic clock, and Wait wakes when it is due.
func TestDelay(t *testing.T) {
	const delay = 30 * time.Millisecond
	a, b := newPair(t, memif.Options{Delay: delay})
	bufs, sizes := bufsFor(b, 4)
	for round := range 3 {
		start := time.Now()
		a.Write([][]byte{frame(uint64(round), 64)})
		for {
			if err := b.Wait(-1); err != nil { // wakes on the due time
				t.Fatal(err)
			}
			n, err := b.Read(bufs, sizes)
			if err != nil {
				t.Fatal(err)
			}
			d := time.Since(start)
			if n == 0 {
				if d > 5*time.Second {
					t.Fatalf("frame not readable after %v", d)
				}
				continue
			}
			if d < delay {
				t.Fatalf("frame readable after %v, Delay %v", d, delay)
			}
			break
		}
	}
}

// TestReady: an unpaced end signals frames written to it, and its closed
// channel closes with the wire; a paced end has no frames channel (its
// frames become readable at due times nothing signals).
func TestReady(t *testing.T) {
	a, b, err := memif.NewPair(memif.Options{Name: "ready"})
	if err != nil {
		t.Fatal(err)
	}
	frames, closed := b.(netif.Notifier).Ready()
	if frames == nil || closed == nil {
		t.Fatal("an unpaced end has no Ready channels")
	}
	select {
	case <-frames:
		t.Fatal("frames signalled before any Write")
	default:
	}
	if _, err := a.Write([][]byte{make([]byte, 60)}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-frames:
	default:
		t.Fatal("no frames signal after a Write")
	}
	bufs, sizes := [][]byte{make([]byte, 2048)}, []int{0}
	if n, err := b.Read(bufs, sizes); n != 1 || err != nil {
		t.Fatalf("Read: %d, %v", n, err)
	}
	a.Close()
	select {
	case <-closed:
	default:
		t.Fatal("closed not closed with the wire")
	}

	p, q, err := memif.NewPair(memif.Options{Name: "paced", Rate: 1e9})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if frames, closed := q.(netif.Notifier).Ready(); frames != nil || closed == nil {
		t.Errorf("paced end: frames %v, closed %v", frames, closed)
	}
}
