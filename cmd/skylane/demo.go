package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/pool"
)

// runDemo shows the packet memory and channels at work, in one process, no
// root: two apps with their own pools, a burst that grows one pool, the
// reaper giving the memory back, and a misbehaving app losing only its own
// channel.
func runDemo(args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	packets := fs.Int("packets", 200_000, "packets each way for the well-behaved app")
	idle := fs.Duration("idle", time.Second, "pool idle timeout before segments go back to the OS")
	if err := fs.Parse(args); err != nil {
		return err
	}
	popts := pool.Options{IdleTimeout: *idle}
	good, err := channel.New(channel.Options{Name: "app-good", Pool: popts})
	if err != nil {
		return err
	}
	defer good.Close()
	bad, err := channel.New(channel.Options{Name: "app-bad", Pool: popts})
	if err != nil {
		return err
	}
	defer bad.Close()
	ga, err := good.AttachLocal()
	if err != nil {
		return err
	}
	defer ga.Close()
	ba, err := bad.AttachLocal()
	if err != nil {
		return err
	}
	defer ba.Close()

	fmt.Fprintf(os.Stderr, "moving %d packets each way through app-good's channel...\n", *packets)
	start := time.Now()
	bufs := make([]channel.Buf, 32)
	var up, down int
	for up < *packets || down < *packets {
		good.Sync()
		n, err := ga.Alloc(bufs[:min(32, *packets-up)])
		if err != nil {
			return err
		}
		for i := range n {
			bufs[i].Data = bufs[i].Data[:64]
		}
		k, _ := ga.Send(bufs[:n])
		up += k
		m, err := good.TakeTX(bufs)
		if err != nil {
			return err
		}
		// Echo what the app sent back to it, as a nexus would forward it.
		down += good.Deliver(bufs[:m])
		r, _ := ga.Receive(bufs)
		ga.Free(bufs[:r])
	}
	elapsed := time.Since(start)

	fmt.Fprintln(os.Stderr, "app-good holds 3000 buffers at once (a burst)...")
	held := make([]channel.Buf, 0, 3000)
	for len(held) < cap(held) {
		good.Sync()
		n, err := ga.Alloc(bufs[:min(32, cap(held)-len(held))])
		if err != nil {
			return err
		}
		for i := range n {
			clear(bufs[i].Data) // really use the memory
		}
		held = append(held, bufs[:n]...)
	}
	burst := good.Pool().Stats()
	for len(held) > 0 {
		k, _ := ga.Free(held[:min(32, len(held))])
		held = held[k:]
		good.Sync()
	}
	fmt.Fprintf(os.Stderr, "...released; waiting %v for the reaper\n", *idle)
	before, _ := good.Pool().AllocatedBytes()
	for t0 := time.Now(); time.Since(t0) < *idle+1500*time.Millisecond; time.Sleep(250 * time.Millisecond) {
		good.Reap(time.Now())
	}
	// The app unmaps what the nexus released, as its event ring tells it.
	evs := make([]channel.Event, 32)
	for {
		good.Sync()
		if n, err := ga.Events(evs); err != nil || n == 0 {
			break
		}
	}
	after, _ := good.Pool().AllocatedBytes()
	reaped := good.Pool().Stats()

	fmt.Fprintln(os.Stderr, "app-bad frees the same buffers twice...")
	bad.Sync()
	n, _ := ba.Alloc(bufs[:4])
	ba.Free(bufs[:n])
	ba.Free(bufs[:n])
	bad.Sync()
	badErr := ba.Err()
	// app-good is untouched.
	good.Sync()
	n, goodErr := ga.Alloc(bufs[:4])
	if goodErr == nil {
		_, goodErr = ga.Send(bufs[:n])
	}

	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	c := good.Counters()
	fmt.Fprintf(w, "Skylane demo: packet pools and channels (in-memory, one process)\n\n")
	fmt.Fprintf(w, "app-good\tsent %d, received %d packets in %v (%.1f Mpps each way)\n", c.TxPackets, c.RxPackets, elapsed.Round(time.Millisecond), float64(*packets)/elapsed.Seconds()/1e6)
	fmt.Fprintf(w, "\tnotifications sent: %d (a busy app needs none)\n", c.Notifications)
	fmt.Fprintf(w, "pool\tburst grew it to %d segments (%d buffers, %d KiB)\n", burst.Segments, burst.BuffersTotal, burst.Segments*good.Pool().SegmentSize()/1024)
	fmt.Fprintf(w, "\treaper returned %d segments to the OS: %d KiB -> %d KiB held, %d segments left\n", reaped.Releases, before/1024, after/1024, reaped.Segments)
	fmt.Fprintf(w, "\tapp maps %d segments now\n", ga.MappedSegments())
	fmt.Fprintf(w, "app-bad\t%v\n", badErr)
	fmt.Fprintf(w, "app-good after that\t%s\n", okOr(goodErr))
	if err := w.Flush(); err != nil {
		return err
	}
	if badErr == nil || goodErr != nil || !errors.Is(badErr, channel.ErrDefunct) {
		return errors.New("demo: the channels did not behave as expected")
	}
	return nil
}

func okOr(err error) string {
	if err == nil {
		return "still running"
	}
	return err.Error()
}
