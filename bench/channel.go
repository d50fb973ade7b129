package bench

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/internal/shm"
	"github.com/skylane/skylane/ring"
)

// The channel scenario's rows (docs/benchmarks.md).
var channelRows = []struct {
	name        string
	batch, size int
	kind        string // goroutines, processes, slots
}{
	{"goroutines/batch=1/size=64", 1, 64, "goroutines"},
	{"goroutines/batch=32/size=64", 32, 64, "goroutines"},
	{"goroutines/batch=256/size=64", 256, 64, "goroutines"},
	{"goroutines/batch=32/size=1500", 32, 1500, "goroutines"},
	{"processes/batch=32/size=64", 32, 64, "processes"},
	{"slots/batch=32", 32, 0, "slots"},
}

func runChannel(cfg Config) (Report, error) {
	rep := Report{Scenario: "channel", Machine: Machine()}
	var g32 float64
	for _, row := range channelRows {
		if !cfg.wants(row.name) {
			continue
		}
		cfg.progress("channel %s", row.name)
		var ours func(time.Duration) (Rate, error)
		base := func(d time.Duration) (Rate, error) { return pumpGoChan(row.size, d) }
		baseName := "Go buffered chan (alloc/free through a chan too)"
		switch row.kind {
		case "goroutines":
			ours = func(d time.Duration) (Rate, error) { return pumpChannel(row.batch, row.size, d) }
		case "processes":
			ours = func(d time.Duration) (Rate, error) { return pumpProcess(row.batch, row.size, d) }
		case "slots":
			ours = func(d time.Duration) (Rate, error) { return pumpSlots(row.batch, d) }
			base = pumpSlotChan
			baseName = "Go buffered chan of slots"
		}
		o, b, err := Measure(cfg, row.name, ours, base)
		if err != nil {
			return rep, err
		}
		r := Throughput(row.name, "Mpps", o/1e6, baseName, b/1e6)
		if row.name == "goroutines/batch=32/size=64" {
			g32 = r.Value
		}
		if row.kind == "processes" && g32 > 0 {
			r.Extra = map[string]any{"vs_goroutines_batch32": round2(r.Value / g32)}
		}
		rep.Results = append(rep.Results, r)
	}
	return rep, nil
}

func round2(v float64) float64 { return float64(int(v*100+0.5)) / 100 }

// writePayload fills a packet of size bytes: sequence number, then a
// pattern; readPayload reads every byte back and returns the sequence.
func writePayload(b []byte, seq uint64) {
	binary.LittleEndian.PutUint64(b, seq)
	for i := 8; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], seq^uint64(i))
	}
}

func readPayload(b []byte) (seq, sum uint64) {
	seq = binary.LittleEndian.Uint64(b)
	for i := 8; i+8 <= len(b); i += 8 {
		sum += binary.LittleEndian.Uint64(b[i:])
	}
	return seq, sum
}

// appProducer is the app's loop: alloc, write payload, send, until stop or
// the channel dies.
func appProducer(a *channel.App, batch, size int, stop *atomic.Bool) error {
	bufs := make([]channel.Buf, batch)
	var seq uint64
	for !stop.Load() {
		n, err := a.Alloc(bufs)
		if err != nil {
			return err
		}
		if n == 0 {
			runtime.Gosched()
			continue
		}
		for i := range n {
			bufs[i].Data = bufs[i].Data[:size]
			writePayload(bufs[i].Data, seq)
			seq++
		}
		for sent := 0; sent < n && !stop.Load(); {
			k, err := a.Send(bufs[sent:n])
			if err != nil {
				return err
			}
			if k == 0 {
				runtime.Gosched()
			}
			sent += k
		}
	}
	return nil
}

// nexusConsumer is the nexus's loop: take from TX, check and read the
// payload, release, refill; for d after the first packet.
func nexusConsumer(c *channel.Channel, batch int, d time.Duration) (Rate, error) {
	bufs := make([]channel.Buf, max(batch, 64))
	var seq, seq0, sink uint64
	var start time.Time
	began := time.Now()
	for iter := 0; ; iter++ {
		n, err := c.TakeTX(bufs)
		if err != nil {
			return Rate{}, err
		}
		for _, b := range bufs[:n] {
			s, sum := readPayload(b.Data)
			if s != seq {
				return Rate{}, fmt.Errorf("packet %d arrived as %d: lost or reordered", seq, s)
			}
			sink += sum
			seq++
		}
		c.Release(bufs[:n])
		if err := c.Sync(); err != nil {
			return Rate{}, err
		}
		if n == 0 {
			runtime.Gosched()
		}
		if iter&63 == 0 {
			now := time.Now()
			if start.IsZero() {
				if seq > 0 {
					start, seq0 = now, seq
				} else if now.Sub(began) > 10*time.Second {
					return Rate{}, fmt.Errorf("no packet from the app within 10s")
				}
			} else if now.Sub(start) >= d {
				_ = sink
				return Rate{Count: float64(seq - seq0), Elapsed: now.Sub(start)}, nil
			}
		}
	}
}

func pumpChannel(batch, size int, d time.Duration) (Rate, error) {
	c, err := channel.New(channel.Options{Name: "bench"})
	if err != nil {
		return Rate{}, err
	}
	defer c.Close()
	a, err := c.AttachLocal()
	if err != nil {
		return Rate{}, err
	}
	defer a.Close()
	var stop atomic.Bool
	var wg sync.WaitGroup
	var perr error
	wg.Go(func() { perr = appProducer(a, batch, size, &stop) })
	r, err := nexusConsumer(c, batch, d)
	stop.Store(true)
	wg.Wait()
	if err == nil {
		err = perr
	}
	return r, err
}

// pumpGoChan is the baseline: the same packets through buffered Go chans,
// free buffers coming back through a chan as the free ring does.
func pumpGoChan(size int, d time.Duration) (Rate, error) {
	const depth = 1024
	free := make(chan []byte, depth)
	data := make(chan []byte, depth)
	for range depth {
		free <- make([]byte, 2048)
	}
	var stop atomic.Bool
	go func() {
		defer close(data)
		var seq uint64
		for !stop.Load() {
			b := (<-free)[:size]
			writePayload(b, seq)
			seq++
			data <- b
		}
	}()
	var seq, sink uint64
	start := time.Now()
	var err error
	for b := range data {
		if !stop.Load() {
			s, sum := readPayload(b)
			if s != seq && err == nil {
				err = fmt.Errorf("go chan: packet %d arrived as %d", seq, s)
			}
			sink += sum
			seq++
			if seq&1023 == 0 && time.Since(start) >= d {
				stop.Store(true)
			}
		}
		free <- b
	}
	_ = sink
	return Rate{Count: float64(seq), Elapsed: time.Since(start)}, err
}

// pumpSlots exchanges bare slots through a ring in shared memory.
func pumpSlots(batch int, d time.Duration) (Rate, error) {
	const size = 1024
	r, err := shm.NewRegion(shm.RegionOptions{Name: "bench-ring", Size: (ring.MemSize(size) + shm.PageSize - 1) / shm.PageSize * shm.PageSize})
	if err != nil {
		return Rate{}, err
	}
	defer r.Close()
	m, err := shm.Map(r.FD(), 0, r.Size(), true)
	if err != nil {
		return Rate{}, err
	}
	defer m.Unmap()
	if err := ring.Init(m.Bytes(), size); err != nil {
		return Rate{}, err
	}
	p, err := ring.NewProducer(m.Bytes(), size)
	if err != nil {
		return Rate{}, err
	}
	c, err := ring.NewConsumer(m.Bytes(), size)
	if err != nil {
		return Rate{}, err
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		var i uint32
		for !stop.Load() {
			k, _ := p.Reserve(batch)
			if k == 0 {
				runtime.Gosched()
				continue
			}
			for j := range k {
				p.Set(j, ring.Slot{Index: i, Len: 64})
				i++
			}
			p.Commit(k)
		}
	})
	var next uint32
	var n uint64
	start := time.Now()
	for iter := 0; ; iter++ {
		k, _ := c.Peek(batch)
		for j := range k {
			if c.At(j).Index != next {
				stop.Store(true)
				wg.Wait()
				return Rate{}, fmt.Errorf("slot %d arrived as %d", next, c.At(j).Index)
			}
			next++
		}
		c.Release(k)
		n += uint64(k)
		if k == 0 {
			runtime.Gosched()
		}
		if iter&255 == 0 && time.Since(start) >= d {
			break
		}
	}
	el := time.Since(start)
	stop.Store(true)
	wg.Wait()
	return Rate{Count: float64(n), Elapsed: el}, nil
}

func pumpSlotChan(d time.Duration) (Rate, error) {
	ch := make(chan ring.Slot, 1024)
	var stop atomic.Bool
	go func() {
		defer close(ch)
		var i uint32
		for !stop.Load() {
			ch <- ring.Slot{Index: i, Len: 64}
			i++
		}
	}()
	var n uint64
	start := time.Now()
	var err error
	for s := range ch {
		if stop.Load() {
			continue
		}
		if s.Index != uint32(n) && err == nil {
			err = fmt.Errorf("go chan: slot %d arrived as %d", n, s.Index)
		}
		n++
		if n&1023 == 0 && time.Since(start) >= d {
			stop.Store(true)
		}
	}
	return Rate{Count: float64(n), Elapsed: time.Since(start)}, err
}
